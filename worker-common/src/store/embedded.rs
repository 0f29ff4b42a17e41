//! Agent records live in memory and are written behind to a redb file about once a second: a
//! heartbeat from each of tens of thousands of agents must not cost an fsync each. A crash loses at
//! most that second of agent reports, which agents resend anyway (the next sequence gap asks them for
//! full state). Configs, documents and the audit log are written through, durably, before the API
//! answers.
//!
//! One process owns every shard for good, so fences always hold here; epochs matter only where
//! owners can change ([`super::RedisStore`]).

use super::{
    AuditEntry, AuditQuery, Deadline, Doc, Fence, ShardFilter, Store, StoreError, StoredConfig,
};
use crate::names::{SHARD_COUNT, shard_of};
use async_trait::async_trait;
use flotilla_proto::bus::{AgentRecord, AgentStatus};
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const AGENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("agents");
/// Key: "<name>\0<version as 20 digits>", value: JSON of StoredConfig.
const CONFIGS: TableDefinition<&str, &[u8]> = TableDefinition::new("configs");
/// Key: config name, value: its active version. A name without a row (data written before
/// versions could be staged) has its latest version active.
const ACTIVE: TableDefinition<&str, u64> = TableDefinition::new("config_active");
/// Key: "<collection>\0<id>", value: revision (8 bytes, big-endian) then the JSON.
const DOCS: TableDefinition<&str, &[u8]> = TableDefinition::new("docs");
/// Key: (unix ms, sequence), value: JSON of AuditEntry.
const AUDIT: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("audit");

#[derive(Debug)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    agents: Mutex<HashMap<Uuid, AgentRecord>>,
    dirty: Mutex<HashSet<Uuid>>,
    deadlines: Mutex<Deadlines>,
    configs: Mutex<Configs>,
    docs: Mutex<BTreeMap<String, (u64, String)>>,
    audit_seq: Mutex<u64>,
}

#[derive(Debug, Default)]
struct Configs {
    /// Every version of every config, oldest first.
    versions: BTreeMap<String, Vec<StoredConfig>>,
    active: BTreeMap<String, u64>,
}

fn doc_key(collection: &str, id: &str) -> String {
    format!("{collection}\0{id}")
}

/// Silence deadlines, ordered by time within each shard.
#[derive(Debug)]
struct Deadlines {
    by_shard: Vec<BTreeSet<(u64, Uuid)>>,
    by_agent: HashMap<Uuid, u64>,
}

impl Deadlines {
    fn new() -> Self {
        Self {
            by_shard: vec![BTreeSet::new(); usize::from(SHARD_COUNT)],
            by_agent: HashMap::new(),
        }
    }

    fn set(&mut self, uid: Uuid, at: Option<u64>) {
        let shard = &mut self.by_shard[usize::from(shard_of(uid.as_bytes()))];
        let old = match at {
            Some(at) => {
                shard.insert((at, uid));
                self.by_agent.insert(uid, at)
            }
            None => self.by_agent.remove(&uid),
        };
        if let Some(old) = old.filter(|o| Some(*o) != at) {
            shard.remove(&(old, uid));
        }
    }
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

impl EmbeddedStore {
    /// Opens (or creates) `dir/flotilla.redb`. Agents loaded from a previous run are marked
    /// disconnected: this process holds none of their connections.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Io(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("flotilla.redb");
        let db = Database::create(&path)
            .map_err(|e| StoreError::Io(format!("cannot open {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(io)?;
        txn.open_table(AGENTS).map_err(io)?;
        txn.open_table(CONFIGS).map_err(io)?;
        txn.open_table(ACTIVE).map_err(io)?;
        txn.open_table(DOCS).map_err(io)?;
        txn.open_table(AUDIT).map_err(io)?;
        txn.commit().map_err(io)?;

        let mut agents = HashMap::new();
        let mut configs = Configs::default();
        let mut docs = BTreeMap::new();
        let read = db.begin_read().map_err(io)?;
        for row in read.open_table(AGENTS).map_err(io)?.iter().map_err(io)? {
            let (k, v) = row.map_err(io)?;
            let uid =
                Uuid::from_slice(k.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let mut rec =
                AgentRecord::decode(v.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            rec.status = AgentStatus::Disconnected as i32;
            rec.origin = None;
            agents.insert(uid, rec);
        }
        for row in read.open_table(CONFIGS).map_err(io)?.iter().map_err(io)? {
            let (_, v) = row.map_err(io)?;
            let cfg: StoredConfig = serde_json::from_slice(v.value())
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            // Keys sort by name then version: versions arrive oldest first.
            configs
                .versions
                .entry(cfg.name.clone())
                .or_default()
                .push(cfg);
        }
        for (name, versions) in &configs.versions {
            let latest = versions.last().map_or(0, |c| c.version);
            configs.active.insert(name.clone(), latest);
        }
        for row in read.open_table(ACTIVE).map_err(io)?.iter().map_err(io)? {
            let (k, v) = row.map_err(io)?;
            configs.active.insert(k.value().to_owned(), v.value());
        }
        for row in read.open_table(DOCS).map_err(io)?.iter().map_err(io)? {
            let (k, v) = row.map_err(io)?;
            let (rev, json) = v.value().split_at_checked(8).ok_or_else(|| {
                StoreError::Corrupt(format!("document {:?} is too short", k.value()))
            })?;
            let rev = u64::from_be_bytes(rev.try_into().expect("8 bytes"));
            let json =
                String::from_utf8(json.to_vec()).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            docs.insert(k.value().to_owned(), (rev, json));
        }
        // Sequence numbers go on from the newest entry so keys stay unique across restarts.
        let audit_seq = match read.open_table(AUDIT).map_err(io)?.last().map_err(io)? {
            Some((k, _)) => k.value().1,
            None => 0,
        };
        drop(read);
        Ok(Self {
            db: Arc::new(db),
            agents: Mutex::new(agents),
            dirty: Mutex::new(HashSet::new()),
            deadlines: Mutex::new(Deadlines::new()),
            configs: Mutex::new(configs),
            docs: Mutex::new(docs),
            audit_seq: Mutex::new(audit_seq),
        })
    }

    /// Runs one write transaction to completion (durable when this returns).
    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(io)?;
        f(&txn).map_err(io)?;
        txn.commit().map_err(io)
    }

    /// Writes every agent record changed since the last flush.
    pub async fn flush(&self) -> Result<usize, StoreError> {
        let uids: Vec<Uuid> = self.dirty.lock().expect("store lock").drain().collect();
        if uids.is_empty() {
            return Ok(0);
        }
        let rows: Vec<(Uuid, Vec<u8>)> = {
            let agents = self.agents.lock().expect("store lock");
            uids.iter()
                .filter_map(|u| agents.get(u).map(|r| (*u, r.encode_to_vec())))
                .collect()
        };
        let db = self.db.clone();
        let n = rows.len();
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            let txn = db.begin_write().map_err(io)?;
            {
                let mut table = txn.open_table(AGENTS).map_err(io)?;
                for (uid, bytes) in &rows {
                    table
                        .insert(uid.as_bytes().as_slice(), bytes.as_slice())
                        .map_err(io)?;
                }
            }
            txn.commit().map_err(io)
        })
        .await
        .map_err(io)??;
        Ok(n)
    }

    /// Flushes about once a second until `cancel`, then a last time.
    pub async fn run_flusher(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = cancel.cancelled() => break,
            }
            if let Err(e) = self.flush().await {
                tracing::error!(error = %e, "writing agent records failed; will retry");
            }
        }
        match self.flush().await {
            Ok(n) => tracing::debug!(records = n, "final agent flush"),
            Err(e) => tracing::error!(error = %e, "final agent flush failed"),
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get_agent(&self, uid: Uuid) -> Result<Option<AgentRecord>, StoreError> {
        Ok(self.agents.lock().expect("store lock").get(&uid).cloned())
    }

    async fn save_agent(
        &self,
        _fence: Fence,
        record: &AgentRecord,
        deadline: Deadline,
    ) -> Result<(), StoreError> {
        let uid = Uuid::from_slice(&record.instance_uid)
            .map_err(|_| StoreError::Corrupt("agent record without a 16-byte uid".into()))?;
        self.agents
            .lock()
            .expect("store lock")
            .insert(uid, record.clone());
        self.dirty.lock().expect("store lock").insert(uid);
        match deadline {
            Deadline::Arm(at) => self
                .deadlines
                .lock()
                .expect("store lock")
                .set(uid, Some(at)),
            Deadline::Clear => self.deadlines.lock().expect("store lock").set(uid, None),
            Deadline::Keep => {}
        }
        Ok(())
    }

    async fn visit_agents(
        &self,
        shards: ShardFilter<'_>,
        f: &mut (dyn for<'r> FnMut(&'r AgentRecord) + Send),
    ) -> Result<(), StoreError> {
        for (uid, rec) in self.agents.lock().expect("store lock").iter() {
            if shards(shard_of(uid.as_bytes())) {
                f(rec);
            }
        }
        Ok(())
    }

    async fn claim_due(
        &self,
        fence: Fence,
        now_unix_ms: u64,
        retry_ms: u64,
    ) -> Result<Vec<Uuid>, StoreError> {
        let mut d = self.deadlines.lock().expect("store lock");
        let due: Vec<Uuid> = d.by_shard[usize::from(fence.shard)]
            .iter()
            .take_while(|(at, _)| *at <= now_unix_ms)
            .map(|(_, uid)| *uid)
            .collect();
        for uid in &due {
            d.set(*uid, Some(now_unix_ms + retry_ms));
        }
        Ok(due)
    }

    async fn put_config(
        &self,
        mut config: StoredConfig,
        activate: bool,
    ) -> Result<StoredConfig, StoreError> {
        // The lock is held across the write so versions of one name are assigned in order.
        let mut configs = self.configs.lock().expect("store lock");
        let versions = configs.versions.get(&config.name);
        config.version = versions.and_then(|v| v.last()).map_or(1, |c| c.version + 1);
        let active = configs.active.get(&config.name).copied();
        let key = format!("{}\0{:020}", config.name, config.version);
        let json = serde_json::to_vec(&config).map_err(io)?;
        self.write(|txn| {
            txn.open_table(CONFIGS)?
                .insert(key.as_str(), json.as_slice())?;
            let mut act = txn.open_table(ACTIVE)?;
            if activate {
                act.insert(config.name.as_str(), config.version)?;
            } else {
                // Pin the active version (0: none yet): without a row the latest would count.
                act.insert(config.name.as_str(), active.unwrap_or(0))?;
            }
            Ok(())
        })?;
        let active = if activate {
            config.version
        } else {
            active.unwrap_or(0)
        };
        configs.active.insert(config.name.clone(), active);
        let name = config.name.clone();
        configs
            .versions
            .entry(name)
            .or_default()
            .push(config.clone());
        Ok(config)
    }

    async fn activate_config(
        &self,
        name: &str,
        version: u64,
    ) -> Result<Option<StoredConfig>, StoreError> {
        let mut configs = self.configs.lock().expect("store lock");
        let Some(cfg) = configs
            .versions
            .get(name)
            .and_then(|v| v.iter().find(|c| c.version == version))
            .cloned()
        else {
            return Ok(None);
        };
        self.write(|txn| {
            txn.open_table(ACTIVE)?.insert(name, version)?;
            Ok(())
        })?;
        configs.active.insert(name.to_owned(), version);
        Ok(Some(cfg))
    }

    async fn list_configs(&self) -> Result<Vec<StoredConfig>, StoreError> {
        let configs = self.configs.lock().expect("store lock");
        Ok(configs
            .active
            .iter()
            .filter_map(|(name, v)| configs.versions.get(name)?.iter().find(|c| c.version == *v))
            .cloned()
            .collect())
    }

    async fn config_versions(&self, name: &str) -> Result<Vec<StoredConfig>, StoreError> {
        let configs = self.configs.lock().expect("store lock");
        Ok(configs.versions.get(name).cloned().unwrap_or_default())
    }

    async fn put_doc(
        &self,
        collection: &str,
        id: &str,
        expected_revision: u64,
        json: &str,
    ) -> Result<bool, StoreError> {
        let key = doc_key(collection, id);
        let mut docs = self.docs.lock().expect("store lock");
        let current = docs.get(&key).map_or(0, |(rev, _)| *rev);
        if current != expected_revision {
            return Ok(false);
        }
        let rev = current + 1;
        let mut value = rev.to_be_bytes().to_vec();
        value.extend_from_slice(json.as_bytes());
        self.write(|txn| {
            txn.open_table(DOCS)?
                .insert(key.as_str(), value.as_slice())?;
            Ok(())
        })?;
        docs.insert(key, (rev, json.to_owned()));
        Ok(true)
    }

    async fn get_doc(&self, collection: &str, id: &str) -> Result<Option<Doc>, StoreError> {
        let docs = self.docs.lock().expect("store lock");
        Ok(docs.get(&doc_key(collection, id)).map(|(rev, json)| Doc {
            id: id.to_owned(),
            revision: *rev,
            json: json.clone(),
        }))
    }

    async fn list_docs(&self, collection: &str) -> Result<Vec<Doc>, StoreError> {
        let prefix = doc_key(collection, "");
        let docs = self.docs.lock().expect("store lock");
        Ok(docs
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, (rev, json))| Doc {
                id: k[prefix.len()..].to_owned(),
                revision: *rev,
                json: json.clone(),
            })
            .collect())
    }

    async fn append_audit(
        &self,
        mut entry: AuditEntry,
        keep: Duration,
    ) -> Result<AuditEntry, StoreError> {
        let mut seq = self.audit_seq.lock().expect("store lock");
        *seq += 1;
        entry.id = format!("{}-{}", entry.at_unix_ms, *seq);
        let json = serde_json::to_vec(&entry).map_err(io)?;
        let horizon = entry.at_unix_ms.saturating_sub(keep.as_millis() as u64);
        self.write(|txn| {
            let mut table = txn.open_table(AUDIT)?;
            table.insert((entry.at_unix_ms, *seq), json.as_slice())?;
            table.retain_in(..(horizon, 0), |_, _| false)?;
            Ok(())
        })?;
        Ok(entry)
    }

    async fn query_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let read = self.db.begin_read().map_err(io)?;
        let table = read.open_table(AUDIT).map_err(io)?;
        let lo = (query.since_unix_ms.unwrap_or(0), 0);
        let hi = (query.until_unix_ms.unwrap_or(u64::MAX), u64::MAX);
        let mut out = Vec::new();
        for row in table.range(lo..=hi).map_err(io)?.rev() {
            let (_, v) = row.map_err(io)?;
            let entry: AuditEntry = serde_json::from_slice(v.value())
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if query.matches(&entry) {
                out.push(entry);
                if out.len() >= query.limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AuditEntry, AuditQuery, ConfigFile};

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
            let store = EmbeddedStore::open(dir.path()).unwrap();
            store
                .save_agent(fence(uid), &record(uid, 5), Deadline::Keep)
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
                store.put_config(cfg.clone(), true).await.unwrap().version,
                1
            );
            assert_eq!(
                store.put_config(cfg.clone(), true).await.unwrap().version,
                2
            );
            // Staged, not active; a brand-new config staged has no active version at all.
            assert_eq!(
                store.put_config(cfg.clone(), false).await.unwrap().version,
                3
            );
            let mut other = cfg;
            other.name = "staged".into();
            store.put_config(other, false).await.unwrap();
            assert!(store.put_doc("rollouts", "r", 0, "{}").await.unwrap());
            assert!(!store.put_doc("rollouts", "r", 0, "{}").await.unwrap());
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
                // Keeps 1.5 s of history: the first entry is gone once the third is written.
                store
                    .append_audit(e, Duration::from_millis(1_500))
                    .await
                    .unwrap();
            }
            assert_eq!(store.flush().await.unwrap(), 1);
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
        store
            .append_audit(e, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(store.query_audit(&all).await.unwrap().len(), 3);
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
            .save_agent(f, &record(a, 1), Deadline::Arm(100))
            .await
            .unwrap();
        store
            .save_agent(f, &record(b, 1), Deadline::Arm(50))
            .await
            .unwrap();
        store
            .save_agent(f, &record(a, 2), Deadline::Arm(3000))
            .await
            .unwrap();
        assert_eq!(store.claim_due(f, 200, 1000).await.unwrap(), vec![b]);
        // Claimed: not due again until the retry time, then due again (the claimer never saved).
        assert!(store.claim_due(f, 200, 1000).await.unwrap().is_empty());
        assert_eq!(store.claim_due(f, 1200, 1000).await.unwrap(), vec![b]);
        store
            .save_agent(f, &record(b, 2), Deadline::Clear)
            .await
            .unwrap();
        store
            .save_agent(f, &record(a, 3), Deadline::Clear)
            .await
            .unwrap();
        assert!(store.claim_due(f, 10_000, 1000).await.unwrap().is_empty());
    }
}
