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

mod state;
#[cfg(test)]
mod tests;

use super::tally::{AgentCounts, Tally};
use super::types::{
    AuditEntry, AuditOf, AuditPage, AuditQuery, Claimed, DEFAULT_AUDIT_RETENTION, Deadline, Doc,
    Fence, KeptParts, ShardFilter, Store, StoreError, StoredConfig, Touch,
};
use crate::names::shard_of;
use async_trait::async_trait;
use flotilla_proto::bus::{AgentRecord, AgentStatus};
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable};
use state::{
    ACTIVE, AGENTS, AUDIT, CONFIGS, Configs, DOCS, Deadlines, Inner, StoreMetrics, audit_row,
    corrupt, doc_key, io,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
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
            agents.insert(uid, Arc::new(rec));
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

    /// Starts the flushes: about once a second until `cancel`, then a last time, in a thread
    /// of its own at a lower CPU priority, so that a flush's burst of encoding and writing gives
    /// way to the agents' messages when the cores are busy (docs/benchmarks.md). The future
    /// returned ends after the last flush.
    pub fn start_flusher(
        &self,
        cancel: CancellationToken,
    ) -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let inner = self.inner.clone();
        std::thread::Builder::new()
            .name("flotilla-flush".into())
            .spawn(move || {
                lower_this_threads_priority();
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(FLUSH_EVERY) {
                    if let Err(e) = inner.flush() {
                        tracing::error!(error = %e, "writing agent records failed; will retry");
                    }
                }
                match inner.flush() {
                    Ok(n) => tracing::debug!(records = n, "final agent flush"),
                    Err(e) => tracing::error!(
                        error = %e,
                        "final agent flush failed; agent reports since the last flush are lost"
                    ),
                }
                // The database let go of before saying so: a server started again in this
                // process opens the data directory the moment this one's flusher has ended.
                drop(inner);
                let _ = done.send(());
            })?;
        Ok(async move {
            cancel.cancelled().await;
            let _ = stop.send(());
            let _ = finished.await;
        })
    }
}

/// How often changed agent records are written to the data directory.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Gives the calling thread (alone: on Linux the nice value is a thread's) the nice value 10.
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 10) {
        tracing::debug!(error = %e, "the flush thread keeps its priority");
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get_agent(&self, uid: Uuid) -> Result<Option<AgentRecord>, StoreError> {
        let rec = self.inner.agents.lock().get(&uid).cloned();
        Ok(rec.map(Arc::unwrap_or_clone))
    }

    /// Records are held whole and decoded: no parts are kept apart (`_kept` is never given).
    async fn save_agent_keeping(
        &self,
        _fence: Fence,
        record: &AgentRecord,
        deadline: Deadline,
        audit: Option<&AuditEntry>,
        _kept: KeptParts,
    ) -> Result<bool, StoreError> {
        let uid = Uuid::from_slice(&record.instance_uid)
            .map_err(|_| StoreError::Corrupt("agent record without a 16-byte uid".into()))?;
        if !record.copied_description.is_empty() || !record.copied_components.is_empty() {
            return Err(StoreError::Corrupt(
                "an owner's copy given to a store that keeps records decoded".into(),
            ));
        }
        let inner = &self.inner;
        // The record it replaces is freed after the lock.
        let replace = || {
            let _replaced = inner.agents.lock().insert(uid, Arc::new(record.clone()));
        };
        if audit.is_some() {
            // What an admin changed is on disk, with its audit entry, before anyone is told.
            let bytes = record.encode_to_vec();
            inner.commit_audited(audit, |txn| {
                txn.open_table(AGENTS)?
                    .insert(uid.as_bytes().as_slice(), bytes.as_slice())?;
                Ok(())
            })?;
            replace();
        } else {
            // A heartbeat changes the record held in place, with no copy of it made.
            if !inner.touch_if_only_heard(record) {
                replace();
            }
            // Marked after the change: a flush that takes the mark writes the change.
            inner.dirty.lock().insert(uid);
        }
        inner.deadlines.lock().apply(uid, deadline);
        Ok(false)
    }

    async fn touch_agent(
        &self,
        _fence: Fence,
        touch: Touch,
        deadline: Deadline,
    ) -> Result<bool, StoreError> {
        let inner = &self.inner;
        match inner.agents.lock().get_mut(&touch.uid) {
            Some(rec) => touch.apply(Arc::make_mut(rec)),
            None => return Ok(false),
        }
        inner.dirty.lock().insert(touch.uid);
        inner.deadlines.lock().apply(touch.uid, deadline);
        Ok(true)
    }

    fn holds_agents_in_memory(&self) -> bool {
        true
    }

    async fn delete_agent(
        &self,
        _fence: Fence,
        uid: Uuid,
        audit: Option<&AuditEntry>,
    ) -> Result<bool, StoreError> {
        let inner = &self.inner;
        if !inner.agents.lock().contains_key(&uid) {
            return Ok(false);
        }
        inner.commit_audited(audit, |txn| {
            txn.open_table(AGENTS)?.remove(uid.as_bytes().as_slice())?;
            Ok(())
        })?;
        inner.agents.lock().remove(&uid);
        inner.dirty.lock().remove(&uid);
        inner.deadlines.lock().set(uid, None);
        Ok(true)
    }

    async fn visit_agents(
        &self,
        shards: ShardFilter<'_>,
        f: &mut (dyn for<'r> FnMut(&'r AgentRecord) + Send),
    ) -> Result<(), StoreError> {
        for rec in self.inner.records(|uid| shards(shard_of(uid.as_bytes()))) {
            f(&rec);
        }
        Ok(())
    }

    async fn agent_counts(&self) -> Result<Option<AgentCounts>, StoreError> {
        // Every record is in memory: summing their tallies takes a few milliseconds even for
        // 100,000 agents, and needs nothing kept in step.
        let mut counts = AgentCounts::default();
        // Summed under the lock: a tally is a few field reads, cheaper than taking the records.
        for rec in self.inner.agents.lock().values() {
            counts.add(Tally::of(rec));
        }
        Ok(Some(counts))
    }

    async fn claim_due(
        &self,
        fence: Fence,
        now_unix_ms: u64,
        retry_ms: u64,
    ) -> Result<Claimed, StoreError> {
        let mut d = self.inner.deadlines.lock();
        let shard = usize::from(fence.shard);
        let due: Vec<Uuid> = d.by_shard[shard]
            .iter()
            .take_while(|(at, _)| *at <= now_unix_ms)
            .map(|(_, uid)| *uid)
            .collect();
        for uid in &due {
            d.set(*uid, Some(now_unix_ms.saturating_add(retry_ms)));
        }
        let next_unix_ms = d.by_shard[shard].first().map(|(at, _)| *at);
        Ok(Claimed { due, next_unix_ms })
    }

    async fn put_config(
        &self,
        mut config: StoredConfig,
        activate: bool,
        audit: AuditOf<'_>,
    ) -> Result<StoredConfig, StoreError> {
        let inner = &self.inner;
        // The lock is held across the write so versions of one name are assigned in order.
        let mut configs = inner.configs.lock();
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

    async fn import_config(
        &self,
        config: StoredConfig,
        audit: Option<&AuditEntry>,
    ) -> Result<(), StoreError> {
        let inner = &self.inner;
        let mut configs = inner.configs.lock();
        let key = format!("{}\0{:020}", config.name, config.version);
        let json = serde_json::to_vec(&config).map_err(io)?;
        let pinned = configs.active.get(&config.name).copied();
        inner.commit_audited(audit, |txn| {
            txn.open_table(CONFIGS)?
                .insert(key.as_str(), json.as_slice())?;
            if pinned.is_none() {
                // Without a row the latest would count as active: none is.
                txn.open_table(ACTIVE)?.insert(config.name.as_str(), 0)?;
            }
            Ok(())
        })?;
        configs.active.entry(config.name.clone()).or_insert(0);
        let versions = configs.versions.entry(config.name.clone()).or_default();
        match versions.binary_search_by_key(&config.version, |c| c.version) {
            Ok(i) => versions[i] = config,
            Err(i) => versions.insert(i, config),
        }
        Ok(())
    }

    async fn activate_config(
        &self,
        name: &str,
        version: u64,
    ) -> Result<Option<StoredConfig>, StoreError> {
        let inner = &self.inner;
        let mut configs = inner.configs.lock();
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

    async fn deactivate_config(
        &self,
        name: &str,
        audit: Option<&AuditEntry>,
    ) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let mut configs = inner.configs.lock();
        if configs.active.get(name).copied().unwrap_or(0) == 0 {
            return Ok(false);
        }
        inner.commit_audited(audit, |txn| {
            // 0: no version active (as for a config only staged so far).
            txn.open_table(ACTIVE)?.insert(name, 0)?;
            Ok(())
        })?;
        configs.active.insert(name.to_owned(), 0);
        Ok(true)
    }

    async fn list_configs(&self) -> Result<Vec<StoredConfig>, StoreError> {
        let configs = self.inner.configs.lock();
        Ok(configs
            .active
            .iter()
            .filter_map(|(name, v)| configs.versions.get(name)?.iter().find(|c| c.version == *v))
            .cloned()
            .collect())
    }

    async fn config_versions(&self, name: &str) -> Result<Vec<StoredConfig>, StoreError> {
        let configs = self.inner.configs.lock();
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
        let mut docs = inner.docs.lock();
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
        let docs = self.inner.docs.lock();
        Ok(docs.get(&doc_key(collection, id)).map(|(rev, json)| Doc {
            id: id.to_owned(),
            revision: *rev,
            json: json.clone(),
        }))
    }

    async fn list_docs(&self, collection: &str) -> Result<Vec<Doc>, StoreError> {
        let prefix = doc_key(collection, "");
        let docs = self.inner.docs.lock();
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
        let mut page = AuditPage::default();
        for row in table.range(lo..=hi).map_err(io)?.rev() {
            let (_, v) = row.map_err(io)?;
            let entry: AuditEntry = serde_json::from_slice(v.value()).map_err(corrupt)?;
            if !page.offer(query, entry, v.value().len()) {
                break;
            }
        }
        Ok(page)
    }

    fn health(&self) -> Result<(), String> {
        match self.inner.failing.lock().as_ref() {
            None => Ok(()),
            Some(why) => Err(why.clone()),
        }
    }
}
