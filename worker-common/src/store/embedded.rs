//! Agent records live in memory and are written behind to a redb file about once a second: a
//! heartbeat from each of tens of thousands of agents must not cost an fsync each. A crash loses at
//! most that second of agent reports, which agents resend anyway (the next sequence gap asks them for
//! full state). Everything an admin changes (configs, documents, labels, certificates, restarts,
//! deletions) is written through, with its audit entry in the same transaction, before the API
//! answers.
//!
//! A failed write (a full disk) closes the database; the next write reopens it, so the store
//! recovers by itself once space returns. Agent records that could not be written stay queued
//! until they are, and [`Store::health`] says the store is failing meanwhile.
//!
//! One process owns every shard for good, so fences always hold here; epochs matter only where
//! owners can change ([`super::RedisStore`]).

use super::types::{
    AuditEntry, AuditOf, AuditPage, AuditQuery, DEFAULT_AUDIT_RETENTION, Deadline, Doc, Fence,
    ShardFilter, Store, StoreError, StoredConfig,
};
use crate::names::{SHARD_COUNT, shard_of};
use async_trait::async_trait;
use flotilla_proto::bus::{AgentRecord, AgentStatus};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
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

#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    /// The open database; None once a write failed, until the next write reopens it.
    db: Mutex<Option<Arc<Database>>>,
    /// Held by every write to the file, so a write-behind flush of older records can never land
    /// after a newer record written through.
    writing: Mutex<()>,
    agents: Mutex<HashMap<Uuid, AgentRecord>>,
    dirty: Mutex<HashSet<Uuid>>,
    deadlines: Mutex<Deadlines>,
    configs: Mutex<Configs>,
    docs: Mutex<BTreeMap<String, (u64, String)>>,
    audit_seq: Mutex<u64>,
    audit_retention: Duration,
    /// Why the last write failed, while no write has succeeded since.
    failing: Mutex<Option<String>>,
    metrics: StoreMetrics,
}

/// `flotilla_store_*`: what an operator watches when the data directory is in trouble.
#[derive(Debug, Clone, Default)]
struct StoreMetrics {
    write_errors: Counter,
    unwritten_agents: Gauge,
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

    fn apply(&mut self, uid: Uuid, deadline: Deadline) {
        match deadline {
            Deadline::Arm(at) => self.set(uid, Some(at)),
            Deadline::Clear => self.set(uid, None),
            Deadline::Keep => {}
        }
    }
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind, still consistent for
    // readers: carry on rather than poison every later caller.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The audit row of `entry` with sequence number `seq`, and the id the entry gets.
fn audit_row(entry: &AuditEntry, seq: u64) -> Result<(String, Vec<u8>), StoreError> {
    let mut entry = entry.clone();
    entry.id = format!("{}-{seq}", entry.at_unix_ms);
    let json = serde_json::to_vec(&entry).map_err(io)?;
    Ok((entry.id, json))
}

impl EmbeddedStore {
    /// Opens (or creates) `dir/flotilla.redb`. Agents loaded from a previous run are marked
    /// disconnected: this process holds none of their connections.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, DEFAULT_AUDIT_RETENTION)
    }

    /// [`EmbeddedStore::open`], forgetting audit entries older than `audit_retention`.
    pub fn open_with(dir: &Path, audit_retention: Duration) -> Result<Self, StoreError> {
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
            let uid = Uuid::from_slice(k.value()).map_err(corrupt)?;
            let mut rec = AgentRecord::decode(v.value()).map_err(corrupt)?;
            rec.status = AgentStatus::Disconnected as i32;
            rec.origin = None;
            agents.insert(uid, rec);
        }
        for row in read.open_table(CONFIGS).map_err(io)?.iter().map_err(io)? {
            let (_, v) = row.map_err(io)?;
            let cfg: StoredConfig = serde_json::from_slice(v.value()).map_err(corrupt)?;
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
            let rev = u64::from_be_bytes(rev.try_into().map_err(corrupt)?);
            let json = String::from_utf8(json.to_vec()).map_err(corrupt)?;
            docs.insert(k.value().to_owned(), (rev, json));
        }
        // Sequence numbers go on from the newest entry so keys stay unique across restarts.
        let audit_seq = match read.open_table(AUDIT).map_err(io)?.last().map_err(io)? {
            Some((k, _)) => k.value().1,
            None => 0,
        };
        drop(read);
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                db: Mutex::new(Some(Arc::new(db))),
                writing: Mutex::new(()),
                agents: Mutex::new(agents),
                dirty: Mutex::new(HashSet::new()),
                deadlines: Mutex::new(Deadlines::new()),
                configs: Mutex::new(configs),
                docs: Mutex::new(docs),
                audit_seq: Mutex::new(audit_seq),
                audit_retention,
                failing: Mutex::new(None),
                metrics: StoreMetrics::default(),
            }),
        })
    }

    /// Registers `flotilla_store_write_errors` and `flotilla_store_unwritten_agents`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("flotilla_store");
        let m = &self.inner.metrics;
        r.register(
            "write_errors",
            "Writes to the data directory that failed (a full disk, an I/O error)",
            m.write_errors.clone(),
        );
        r.register(
            "unwritten_agents",
            "Agent records changed in memory and not yet written to the data directory",
            m.unwritten_agents.clone(),
        );
    }

    /// Writes every agent record changed since the last flush; those that could not be written
    /// stay queued for the next one.
    pub async fn flush(&self) -> Result<usize, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.flush())
            .await
            .map_err(io)?
    }

    /// Flushes about once a second until `cancel`, then a last time.
    pub async fn run_flusher(self, cancel: CancellationToken) {
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
            Err(e) => {
                tracing::error!(error = %e, "final agent flush failed; agent reports since the last flush are lost")
            }
        }
    }
}

impl Inner {
    /// The database for a write, reopened if a failed write closed it.
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        let mut slot = lock(&self.db);
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        let db = Database::create(&self.path)
            .map_err(|e| StoreError::Io(format!("cannot reopen {}: {e}", self.path.display())))?;
        let db = Arc::new(db);
        *slot = Some(db.clone());
        tracing::info!(path = %self.path.display(), "data directory reopened");
        Ok(db)
    }

    /// Runs one write transaction to completion: durable when this returns Ok. A failure closes
    /// the database (redb asks to reopen after an I/O error) and marks the store failing.
    fn commit(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        let _writing = lock(&self.writing);
        let result = self.db().and_then(|db| {
            let txn = db.begin_write().map_err(io)?;
            f(&txn).map_err(io)?;
            txn.commit().map_err(io)
        });
        match &result {
            Ok(()) => {
                if lock(&self.failing).take().is_some() {
                    tracing::info!("writes to the data directory succeed again");
                }
            }
            Err(e) => {
                *lock(&self.db) = None;
                self.metrics.write_errors.inc();
                let why = format!("cannot write to {}: {e}", self.path.display());
                tracing::error!(error = %why, "store write failed");
                *lock(&self.failing) = Some(why);
            }
        }
        result.map_err(|e| StoreError::Io(format!("cannot write to {}: {e}", self.path.display())))
    }

    fn flush(&self) -> Result<usize, StoreError> {
        if lock(&self.dirty).is_empty() {
            self.metrics.unwritten_agents.set(0);
            return Ok(0);
        }
        // The records are taken inside the write (under `writing`): no write-through of a newer
        // record can land between this snapshot and its commit.
        let mut taken: Vec<Uuid> = Vec::new();
        let written = self.commit(|txn| {
            taken = lock(&self.dirty).drain().collect();
            let rows: Vec<(Uuid, Vec<u8>)> = {
                let agents = lock(&self.agents);
                taken
                    .iter()
                    .filter_map(|u| agents.get(u).map(|r| (*u, r.encode_to_vec())))
                    .collect()
            };
            let mut table = txn.open_table(AGENTS)?;
            for (uid, bytes) in &rows {
                table.insert(uid.as_bytes().as_slice(), bytes.as_slice())?;
            }
            Ok(())
        });
        let mut dirty = lock(&self.dirty);
        let n = taken.len();
        if written.is_err() {
            dirty.extend(taken);
        }
        self.metrics.unwritten_agents.set(dirty.len() as i64);
        written.map(|()| n)
    }

    fn next_audit_seq(&self) -> u64 {
        let mut seq = lock(&self.audit_seq);
        *seq += 1;
        *seq
    }

    /// Inserts an audit row in `txn`, and forgets rows past the retention.
    fn insert_audit(
        &self,
        txn: &WriteTransaction,
        entry: &AuditEntry,
        seq: u64,
        json: &[u8],
    ) -> Result<(), redb::Error> {
        let horizon = entry
            .at_unix_ms
            .saturating_sub(u64::try_from(self.audit_retention.as_millis()).unwrap_or(u64::MAX));
        let mut table = txn.open_table(AUDIT)?;
        table.insert((entry.at_unix_ms, seq), json)?;
        table.retain_in(..(horizon, 0), |_, _| false)?;
        Ok(())
    }

    /// A write of `f` plus `audit` (if any) in one transaction.
    fn commit_audited(
        &self,
        audit: Option<&AuditEntry>,
        f: impl FnOnce(&WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        let row = match audit {
            Some(entry) => {
                let seq = self.next_audit_seq();
                Some((entry, seq, audit_row(entry, seq)?.1))
            }
            None => None,
        };
        self.commit(|txn| {
            f(txn)?;
            if let Some((entry, seq, json)) = &row {
                self.insert_audit(txn, entry, *seq, json)?;
            }
            Ok(())
        })
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get_agent(&self, uid: Uuid) -> Result<Option<AgentRecord>, StoreError> {
        Ok(lock(&self.inner.agents).get(&uid).cloned())
    }

    async fn save_agent(
        &self,
        _fence: Fence,
        record: &AgentRecord,
        deadline: Deadline,
        audit: Option<&AuditEntry>,
    ) -> Result<(), StoreError> {
        let uid = Uuid::from_slice(&record.instance_uid)
            .map_err(|_| StoreError::Corrupt("agent record without a 16-byte uid".into()))?;
        let inner = &self.inner;
        if audit.is_some() {
            // What an admin changed is on disk, with its audit entry, before anyone is told.
            let bytes = record.encode_to_vec();
            inner.commit_audited(audit, |txn| {
                txn.open_table(AGENTS)?
                    .insert(uid.as_bytes().as_slice(), bytes.as_slice())?;
                Ok(())
            })?;
        } else {
            lock(&inner.dirty).insert(uid);
        }
        lock(&inner.agents).insert(uid, record.clone());
        lock(&inner.deadlines).apply(uid, deadline);
        Ok(())
    }

    async fn delete_agent(
        &self,
        _fence: Fence,
        uid: Uuid,
        audit: Option<&AuditEntry>,
    ) -> Result<bool, StoreError> {
        let inner = &self.inner;
        if !lock(&inner.agents).contains_key(&uid) {
            return Ok(false);
        }
        inner.commit_audited(audit, |txn| {
            txn.open_table(AGENTS)?.remove(uid.as_bytes().as_slice())?;
            Ok(())
        })?;
        lock(&inner.agents).remove(&uid);
        lock(&inner.dirty).remove(&uid);
        lock(&inner.deadlines).set(uid, None);
        Ok(true)
    }

    async fn visit_agents(
        &self,
        shards: ShardFilter<'_>,
        f: &mut (dyn for<'r> FnMut(&'r AgentRecord) + Send),
    ) -> Result<(), StoreError> {
        for (uid, rec) in lock(&self.inner.agents).iter() {
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
        let mut d = lock(&self.inner.deadlines);
        let due: Vec<Uuid> = d.by_shard[usize::from(fence.shard)]
            .iter()
            .take_while(|(at, _)| *at <= now_unix_ms)
            .map(|(_, uid)| *uid)
            .collect();
        for uid in &due {
            d.set(*uid, Some(now_unix_ms.saturating_add(retry_ms)));
        }
        Ok(due)
    }

    async fn put_config(
        &self,
        mut config: StoredConfig,
        activate: bool,
        audit: AuditOf<'_>,
    ) -> Result<StoredConfig, StoreError> {
        let inner = &self.inner;
        // The lock is held across the write so versions of one name are assigned in order.
        let mut configs = lock(&inner.configs);
        let versions = configs.versions.get(&config.name);
        config.version = versions.and_then(|v| v.last()).map_or(1, |c| c.version + 1);
        let active = configs.active.get(&config.name).copied();
        let key = format!("{}\0{:020}", config.name, config.version);
        let json = serde_json::to_vec(&config).map_err(io)?;
        let entry = audit(&config);
        inner.commit_audited(Some(&entry), |txn| {
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
        let inner = &self.inner;
        let mut configs = lock(&inner.configs);
        let Some(cfg) = configs
            .versions
            .get(name)
            .and_then(|v| v.iter().find(|c| c.version == version))
            .cloned()
        else {
            return Ok(None);
        };
        inner.commit(|txn| {
            txn.open_table(ACTIVE)?.insert(name, version)?;
            Ok(())
        })?;
        configs.active.insert(name.to_owned(), version);
        Ok(Some(cfg))
    }

    async fn list_configs(&self) -> Result<Vec<StoredConfig>, StoreError> {
        let configs = lock(&self.inner.configs);
        Ok(configs
            .active
            .iter()
            .filter_map(|(name, v)| configs.versions.get(name)?.iter().find(|c| c.version == *v))
            .cloned()
            .collect())
    }

    async fn config_versions(&self, name: &str) -> Result<Vec<StoredConfig>, StoreError> {
        let configs = lock(&self.inner.configs);
        Ok(configs.versions.get(name).cloned().unwrap_or_default())
    }

    async fn put_doc(
        &self,
        collection: &str,
        id: &str,
        expected_revision: u64,
        json: &str,
        audit: Option<&AuditEntry>,
    ) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let key = doc_key(collection, id);
        let mut docs = lock(&inner.docs);
        let current = docs.get(&key).map_or(0, |(rev, _)| *rev);
        if current != expected_revision {
            return Ok(false);
        }
        let rev = current + 1;
        let mut value = rev.to_be_bytes().to_vec();
        value.extend_from_slice(json.as_bytes());
        inner.commit_audited(audit, |txn| {
            txn.open_table(DOCS)?
                .insert(key.as_str(), value.as_slice())?;
            Ok(())
        })?;
        docs.insert(key, (rev, json.to_owned()));
        Ok(true)
    }

    async fn get_doc(&self, collection: &str, id: &str) -> Result<Option<Doc>, StoreError> {
        let docs = lock(&self.inner.docs);
        Ok(docs.get(&doc_key(collection, id)).map(|(rev, json)| Doc {
            id: id.to_owned(),
            revision: *rev,
            json: json.clone(),
        }))
    }

    async fn list_docs(&self, collection: &str) -> Result<Vec<Doc>, StoreError> {
        let prefix = doc_key(collection, "");
        let docs = lock(&self.inner.docs);
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

    async fn append_audit(&self, mut entry: AuditEntry) -> Result<AuditEntry, StoreError> {
        let inner = &self.inner;
        let seq = inner.next_audit_seq();
        let (id, json) = audit_row(&entry, seq)?;
        inner.commit(|txn| inner.insert_audit(txn, &entry, seq, &json))?;
        entry.id = id;
        Ok(entry)
    }

    async fn query_audit(&self, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        let db = self.inner.db()?;
        let read = db.begin_read().map_err(io)?;
        let table = read.open_table(AUDIT).map_err(io)?;
        let lo = (query.since_unix_ms.unwrap_or(0), 0);
        let hi = (query.until_unix_ms.unwrap_or(u64::MAX), u64::MAX);
        let (mut page, mut used) = (AuditPage::default(), 0);
        for row in table.range(lo..=hi).map_err(io)?.rev() {
            let (_, v) = row.map_err(io)?;
            let entry: AuditEntry = serde_json::from_slice(v.value()).map_err(corrupt)?;
            if query.matches(&entry) && !page.add(query, entry, &mut used, v.value().len()) {
                break;
            }
        }
        Ok(page)
    }

    fn health(&self) -> Result<(), String> {
        match lock(&self.inner.failing).as_ref() {
            None => Ok(()),
            Some(why) => Err(why.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(store.claim_due(f, 200, 1000).await.unwrap(), vec![b]);
        // Claimed: not due again until the retry time, then due again (the claimer never saved).
        assert!(store.claim_due(f, 200, 1000).await.unwrap().is_empty());
        assert_eq!(store.claim_due(f, 1200, 1000).await.unwrap(), vec![b]);
        store
            .save_agent(f, &record(b, 2), Deadline::Clear, None)
            .await
            .unwrap();
        store
            .save_agent(f, &record(a, 3), Deadline::Clear, None)
            .await
            .unwrap();
        assert!(store.claim_due(f, 10_000, 1000).await.unwrap().is_empty());
    }
}
