use super::*;
use crate::store::types::{AuditEntry, AuditQuery, ConfigFile};

fn record(uid: Uuid, seq: u64) -> AgentRecord {
    AgentRecord {
        instance_uid: uid.as_bytes().to_vec(),
        sequence_num: seq,
        status: AgentStatus::Connected as i32,
        ..Default::default()
    }
}

#[tokio::test]
async fn agents_and_configs_survive_reopen_and_agents_come_back_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let uid = Uuid::now_v7();
    {
        // Keeps 1.5 s of audit history: the first entry is gone once the third is written.
        let store = EmbeddedStore::open_with(dir.path(), Duration::from_millis(1_500)).unwrap();
        store
            .save_agent(fence(uid), &record(uid, 5), Deadline::Keep, None)
            .await
            .unwrap();
        let cfg = StoredConfig {
            name: "base".into(),
            version: 0,
            selector: "env=prod".parse().unwrap(),
            files: BTreeMap::from([(
                "c.yaml".into(),
                ConfigFile {
                    body: "a: 1".into(),
                    content_type: "text/yaml".into(),
                },
            )]),
            hash: "00".into(),
            packages: BTreeMap::new(),
            settings: None,
            created_unix_ms: 1,
            created_by: String::new(),
            comment: String::new(),
        };
        assert_eq!(
            store
                .put_config(cfg.clone(), true, &no_audit)
                .await
                .unwrap()
                .version,
            1
        );
        assert_eq!(
            store
                .put_config(cfg.clone(), true, &no_audit)
                .await
                .unwrap()
                .version,
            2
        );
        // Staged, not active; a brand-new config staged has no active version at all.
        assert_eq!(
            store
                .put_config(cfg.clone(), false, &no_audit)
                .await
                .unwrap()
                .version,
            3
        );
        let mut other = cfg;
        other.name = "staged".into();
        store.put_config(other, false, &no_audit).await.unwrap();
        assert!(store.put_doc("rollouts", "r", 0, "{}", None).await.unwrap());
        assert!(!store.put_doc("rollouts", "r", 0, "{}", None).await.unwrap());
        for i in 0..3 {
            let e = AuditEntry {
                id: String::new(),
                at_unix_ms: 1_000 * (i + 1),
                caller: "alice".into(),
                action: "config.put".into(),
                object: format!("config/c{i}"),
                before: None,
                after: None,
            };
            store.append_audit(e).await.unwrap();
        }
        assert_eq!(store.inner.flush().unwrap(), 1);
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let rec = store.get_agent(uid).await.unwrap().unwrap();
    assert_eq!(rec.sequence_num, 5);
    assert_eq!(rec.status, AgentStatus::Disconnected as i32);
    let configs = store.list_configs().await.unwrap();
    assert_eq!(configs.len(), 1, "the staged-only config is not active");
    assert_eq!(configs[0].version, 2);
    assert_eq!(store.config_versions("base").await.unwrap().len(), 3);
    assert_eq!(store.config_versions("staged").await.unwrap().len(), 1);
    assert_eq!(
        store
            .get_doc("rollouts", "r")
            .await
            .unwrap()
            .unwrap()
            .revision,
        1
    );
    let all = AuditQuery {
        limit: 10,
        ..Default::default()
    };
    let kept: Vec<u64> = store
        .query_audit(&all)
        .await
        .unwrap()
        .entries
        .iter()
        .map(|e| e.at_unix_ms)
        .collect();
    assert_eq!(
        kept,
        [3_000, 2_000],
        "newest first, the oldest past retention"
    );
    // Sequence numbers carry on after a reopen: a new entry at the same time is not lost.
    let e = AuditEntry {
        id: String::new(),
        at_unix_ms: 3_000,
        caller: "bob".into(),
        action: "labels.set".into(),
        object: "agent/x".into(),
        before: None,
        after: None,
    };
    store.append_audit(e).await.unwrap();
    assert_eq!(store.query_audit(&all).await.unwrap().entries.len(), 3);
    // A byte budget cuts the page short, and says so.
    let small = AuditQuery {
        max_bytes: 1,
        ..all
    };
    let page = store.query_audit(&small).await.unwrap();
    assert_eq!((page.entries.len(), page.truncated), (1, true));
}

fn no_audit(c: &StoredConfig) -> AuditEntry {
    AuditEntry {
        id: String::new(),
        at_unix_ms: 1,
        caller: "test".into(),
        action: "config.put".into(),
        object: format!("config/{}", c.name),
        before: None,
        after: None,
    }
}

fn fence(uid: Uuid) -> Fence {
    Fence {
        shard: shard_of(uid.as_bytes()),
        epoch: 1,
    }
}

/// Two agents of the same shard, so one claim sees both.
fn same_shard_pair() -> (Uuid, Uuid) {
    let a = Uuid::now_v7();
    loop {
        let b = Uuid::new_v4();
        if shard_of(b.as_bytes()) == shard_of(a.as_bytes()) {
            return (a, b);
        }
    }
}

#[tokio::test]
async fn due_deadlines_are_claimed_then_come_back_unless_saved() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let (a, b) = same_shard_pair();
    let f = fence(a);
    store
        .save_agent(f, &record(a, 1), Deadline::Arm(100), None)
        .await
        .unwrap();
    store
        .save_agent(f, &record(b, 1), Deadline::Arm(50), None)
        .await
        .unwrap();
    store
        .save_agent(f, &record(a, 2), Deadline::Arm(3000), None)
        .await
        .unwrap();
    // The answer names the earliest deadline left: the claimed one's retry time here.
    let claimed = |due: Vec<Uuid>, next| Claimed {
        due,
        next_unix_ms: Some(next),
    };
    assert_eq!(
        store.claim_due(f, 200, 1000).await.unwrap(),
        claimed(vec![b], 1200)
    );
    // Claimed: not due again until the retry time, then due again (the claimer never saved).
    assert_eq!(
        store.claim_due(f, 200, 1000).await.unwrap(),
        claimed(vec![], 1200)
    );
    assert_eq!(
        store.claim_due(f, 1200, 1000).await.unwrap(),
        claimed(vec![b], 2200)
    );
    store
        .save_agent(f, &record(b, 2), Deadline::Clear, None)
        .await
        .unwrap();
    store
        .save_agent(f, &record(a, 3), Deadline::Clear, None)
        .await
        .unwrap();
    assert_eq!(
        store.claim_due(f, 10_000, 1000).await.unwrap(),
        Claimed::default(),
        "no deadline left"
    );
}

#[tokio::test]
async fn a_version_from_another_region_is_added_or_replaces_its_number_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = |hash: &str| StoredConfig {
        name: "shared".into(),
        version: 0,
        selector: crate::selector::Selector::default(),
        files: BTreeMap::new(),
        hash: hash.into(),
        packages: BTreeMap::new(),
        settings: None,
        created_unix_ms: 1,
        created_by: String::new(),
        comment: String::new(),
    };
    let no_audit = |c: &StoredConfig| AuditEntry {
        id: String::new(),
        at_unix_ms: 1,
        caller: "t".into(),
        action: "config.put".into(),
        object: format!("config/{}", c.name),
        before: None,
        after: None,
    };
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.put_config(cfg("aa"), true, &no_audit).await.unwrap();
        // Version 1 as another region made it replaces ours, the active copy included; version
        // 3 is added, and the next version stored here is 4.
        let theirs = StoredConfig {
            version: 1,
            ..cfg("bb")
        };
        store.import_config(theirs, None).await.unwrap();
        let three = StoredConfig {
            version: 3,
            ..cfg("cc")
        };
        store.import_config(three, None).await.unwrap();
        assert_eq!(store.list_configs().await.unwrap()[0].hash, "bb");
        let next = store.put_config(cfg("dd"), false, &no_audit).await.unwrap();
        assert_eq!(next.version, 4);
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let versions: Vec<(u64, String)> = store
        .config_versions("shared")
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.version, c.hash))
        .collect();
    assert_eq!(
        versions,
        [(1, "bb".into()), (3, "cc".into()), (4, "dd".into())]
    );
    assert_eq!(store.list_configs().await.unwrap()[0].version, 1);
}

#[tokio::test]
async fn a_touch_changes_the_sequence_number_last_seen_and_deadline_and_is_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let uid = Uuid::now_v7();
    let touch = Touch {
        uid,
        sequence_num: 6,
        last_seen_unix_ms: 7_000,
    };
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert!(store.holds_agents_in_memory());
        assert!(
            !store
                .touch_agent(fence(uid), touch, Deadline::Keep)
                .await
                .unwrap(),
            "no such agent"
        );
        store
            .save_agent(fence(uid), &record(uid, 5), Deadline::Keep, None)
            .await
            .unwrap();
        assert!(
            store
                .touch_agent(fence(uid), touch, Deadline::Arm(9_000))
                .await
                .unwrap()
        );
        let read = store.get_agent(uid).await.unwrap().unwrap();
        assert_eq!((read.sequence_num, read.last_seen_unix_ms), (6, 7_000));
        assert!(
            store
                .claim_due(fence(uid), 8_999, 10)
                .await
                .unwrap()
                .due
                .is_empty()
        );
        assert_eq!(
            store.claim_due(fence(uid), 9_000, 10).await.unwrap().due,
            vec![uid]
        );
        store.inner.flush().unwrap();
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let read = store.get_agent(uid).await.unwrap().unwrap();
    assert_eq!((read.sequence_num, read.last_seen_unix_ms), (6, 7_000));
}

/// A save that differs from the record held in the sequence number and last-seen time alone
/// changes that record in place; one that differs in more, or finds the record shared (a flush
/// encoding it), replaces it. Every one is flushed, and comes back after a reopen.
#[tokio::test]
async fn a_heartbeats_save_changes_the_record_in_place_and_is_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let uid = Uuid::now_v7();
    let held = |store: &EmbeddedStore| store.inner.agents.lock().get(&uid).cloned().unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let mut rec = record(uid, 5);
        store
            .save_agent(fence(uid), &rec, Deadline::Keep, None)
            .await
            .unwrap();
        let first = Arc::as_ptr(&held(&store));
        rec.sequence_num = 6;
        rec.last_seen_unix_ms = 7_000;
        store
            .save_agent(fence(uid), &rec, Deadline::Arm(9_000), None)
            .await
            .unwrap();
        assert_eq!(Arc::as_ptr(&held(&store)), first, "changed in place");
        assert_eq!(*held(&store), rec);
        assert_eq!(
            store.claim_due(fence(uid), 9_000, 10).await.unwrap().due,
            vec![uid],
            "the deadline armed"
        );
        store.inner.flush().unwrap();

        // More than a touch: replaced.
        rec.sequence_num = 7;
        rec.status = AgentStatus::Disconnected as i32;
        store
            .save_agent(fence(uid), &rec, Deadline::Keep, None)
            .await
            .unwrap();
        assert_ne!(Arc::as_ptr(&held(&store)), first);
        assert_eq!(*held(&store), rec);

        // Shared: replaced, the sharer's record as it was.
        let shared = held(&store);
        rec.sequence_num = 8;
        store
            .save_agent(fence(uid), &rec, Deadline::Keep, None)
            .await
            .unwrap();
        assert_eq!(shared.sequence_num, 7);
        assert_eq!(*held(&store), rec);
        store.inner.flush().unwrap();
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let read = store.get_agent(uid).await.unwrap().unwrap();
    assert_eq!((read.sequence_num, read.last_seen_unix_ms), (8, 7_000));
}

/// Owners keep no copies with a store that holds every record in memory: a record in a copy's
/// form is refused, and the record saved before stays as it was.
#[tokio::test]
async fn a_record_in_an_owners_copy_form_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let uid = Uuid::now_v7();
    store
        .save_agent(fence(uid), &record(uid, 5), Deadline::Keep, None)
        .await
        .unwrap();
    let mut copy = record(uid, 6);
    copy.copied_components = vec![0x32, 0x00];
    let refused = store
        .save_agent(fence(uid), &copy, Deadline::Keep, None)
        .await;
    assert!(
        matches!(refused, Err(StoreError::Corrupt(_))),
        "{refused:?}"
    );
    assert_eq!(store.get_agent(uid).await.unwrap().unwrap().sequence_num, 5);
}

#[tokio::test]
async fn the_data_directory_opens_again_as_soon_as_the_flusher_has_ended() {
    // A server restarted in the same process (as the tests do) opens the directory the moment
    // the last one's flusher ended: the flush thread let go of the database before saying so.
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..50 {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let cancel = CancellationToken::new();
        let flusher = store.start_flusher(cancel.clone()).unwrap();
        cancel.cancel();
        flusher.await;
        assert_eq!(
            Arc::strong_count(&store.inner),
            1,
            "the flush thread holds the store"
        );
        drop(store);
    }
    EmbeddedStore::open(dir.path()).unwrap();
}

/// The flusher writes changed records about once a second from a thread of its own (on Linux
/// at nice 10), and once more when cancelled: what was saved comes back after a reopen.
#[tokio::test]
async fn the_flusher_writes_in_a_thread_of_lower_priority_and_once_more_when_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let (early, late) = (Uuid::now_v7(), Uuid::now_v7());
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let cancel = CancellationToken::new();
        let flusher = tokio::spawn(store.start_flusher(cancel.clone()).unwrap());
        store
            .save_agent(fence(early), &record(early, 1), Deadline::Keep, None)
            .await
            .unwrap();
        let flushed = tokio::time::timeout(Duration::from_secs(10), async {
            while !store.inner.dirty.lock().is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        flushed.await.expect("flushed within 10 s");
        #[cfg(target_os = "linux")]
        {
            let nice_of_flush_threads: Vec<String> = std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|t| {
                    let t = t.unwrap().path();
                    let comm = std::fs::read_to_string(t.join("comm")).ok()?;
                    let stat = std::fs::read_to_string(t.join("stat")).ok()?;
                    // The fields after the command's closing parenthesis; nice is the 19th field.
                    let after = stat.rsplit_once(')')?.1;
                    (comm.trim() == "flotilla-flush")
                        .then(|| after.split_whitespace().nth(16).unwrap().to_owned())
                })
                .collect();
            assert_eq!(nice_of_flush_threads, ["10"]);
        }
        store
            .save_agent(fence(late), &record(late, 2), Deadline::Keep, None)
            .await
            .unwrap();
        cancel.cancel();
        flusher.await.unwrap();
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert!(store.get_agent(early).await.unwrap().is_some());
    assert!(
        store.get_agent(late).await.unwrap().is_some(),
        "the last flush"
    );
}
