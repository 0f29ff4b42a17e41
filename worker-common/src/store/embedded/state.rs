//! The embedded store's state: the tables of the redb file, what is held in memory, and the one
//! write path (`Inner::commit`) that every change to the file goes through.

use crate::names::{SHARD_COUNT, shard_of};
use crate::store::types::{AuditEntry, Deadline, StoreError, StoredConfig, Touch};
use flotilla_proto::bus::AgentRecord;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prost::Message;
use redb::{Database, TableDefinition, WriteTransaction};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

pub(super) const AGENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("agents");
/// Key: "<name>\0<version as 20 digits>", value: JSON of StoredConfig.
pub(super) const CONFIGS: TableDefinition<&str, &[u8]> = TableDefinition::new("configs");
/// Key: config name, value: its active version. A name without a row (data written before
/// versions could be staged) has its latest version active.
pub(super) const ACTIVE: TableDefinition<&str, u64> = TableDefinition::new("config_active");
/// Key: "<collection>\0<id>", value: revision (8 bytes, big-endian) then the JSON.
pub(super) const DOCS: TableDefinition<&str, &[u8]> = TableDefinition::new("docs");
/// Key: (unix ms, sequence), value: JSON of AuditEntry.
pub(super) const AUDIT: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("audit");

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) path: PathBuf,
    /// The open database; None once a write failed, until the next write reopens it.
    pub(super) db: Mutex<Option<Arc<Database>>>,
    /// Held by every write to the file, so a write-behind flush of older records can never land
    /// after a newer record written through.
    pub(super) writing: Mutex<()>,
    /// Shared, so that a flush or a visit takes the records under the lock and reads them
    /// outside it (the lock is on every agent message's path).
    pub(super) agents: Mutex<HashMap<Uuid, Arc<AgentRecord>>>,
    pub(super) dirty: Mutex<HashSet<Uuid>>,
    pub(super) deadlines: Mutex<Deadlines>,
    pub(super) configs: Mutex<Configs>,
    pub(super) docs: Mutex<BTreeMap<String, (u64, String)>>,
    pub(super) audit_seq: Mutex<u64>,
    pub(super) audit_retention: Duration,
    /// Why the last write failed, while no write has succeeded since.
    pub(super) failing: Mutex<Option<String>>,
    pub(super) metrics: StoreMetrics,
}

/// `flotilla_store_*`: what an operator watches when the data directory is in trouble.
#[derive(Debug, Clone, Default)]
pub(super) struct StoreMetrics {
    pub(super) write_errors: Counter,
    pub(super) unwritten_agents: Gauge,
}

#[derive(Debug, Default)]
pub(super) struct Configs {
    /// Every version of every config, oldest first.
    pub(super) versions: BTreeMap<String, Vec<StoredConfig>>,
    pub(super) active: BTreeMap<String, u64>,
}

pub(super) fn doc_key(collection: &str, id: &str) -> String {
    format!("{collection}\0{id}")
}

/// Silence deadlines, ordered by time within each shard.
#[derive(Debug)]
pub(super) struct Deadlines {
    pub(super) by_shard: Vec<BTreeSet<(u64, Uuid)>>,
    pub(super) by_agent: HashMap<Uuid, u64>,
}

impl Deadlines {
    pub(super) fn new() -> Self {
        Self {
            by_shard: vec![BTreeSet::new(); usize::from(SHARD_COUNT)],
            by_agent: HashMap::new(),
        }
    }

    pub(super) fn set(&mut self, uid: Uuid, at: Option<u64>) {
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

    pub(super) fn apply(&mut self, uid: Uuid, deadline: Deadline) {
        match deadline {
            Deadline::Arm(at) => self.set(uid, Some(at)),
            Deadline::Clear => self.set(uid, None),
            Deadline::Keep => {}
        }
    }
}

pub(super) fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

pub(super) fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// The audit row of `entry` with sequence number `seq`, and the id the entry gets.
pub(super) fn audit_row(entry: &AuditEntry, seq: u64) -> Result<(String, Vec<u8>), StoreError> {
    let mut entry = entry.clone();
    entry.id = format!("{}-{seq}", entry.at_unix_ms);
    let json = serde_json::to_vec(&entry).map_err(io)?;
    Ok((entry.id, json))
}

impl Inner {
    /// The database for a write, reopened if a failed write closed it.
    pub(super) fn db(&self) -> Result<Arc<Database>, StoreError> {
        let mut slot = self.db.lock();
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
    pub(super) fn commit(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        let _writing = self.writing.lock();
        let result = self.db().and_then(|db| {
            let txn = db.begin_write().map_err(io)?;
            f(&txn).map_err(io)?;
            txn.commit().map_err(io)
        });
        match &result {
            Ok(()) => {
                if self.failing.lock().take().is_some() {
                    tracing::info!("writes to the data directory succeed again");
                }
            }
            Err(e) => {
                *self.db.lock() = None;
                self.metrics.write_errors.inc();
                let why = format!("cannot write to {}: {e}", self.path.display());
                tracing::error!(error = %why, "store write failed");
                *self.failing.lock() = Some(why);
            }
        }
        result.map_err(|e| StoreError::Io(format!("cannot write to {}: {e}", self.path.display())))
    }

    /// Turns the record held for `record`'s agent into `record` in place when the two differ
    /// in the sequence number and last-seen time alone (a heartbeat); false (the record held as
    /// it was) when they differ in more, or the record held is shared (a flush is encoding it).
    pub(super) fn touch_if_only_heard(&self, record: &AgentRecord) -> bool {
        let Some(touch) = Touch::of(record) else {
            return false;
        };
        let mut agents = self.agents.lock();
        let Some(held) = agents.get_mut(&touch.uid).and_then(Arc::get_mut) else {
            return false;
        };
        let before = Touch {
            sequence_num: held.sequence_num,
            last_seen_unix_ms: held.last_seen_unix_ms,
            ..touch
        };
        touch.apply(held);
        if held == record {
            true
        } else {
            before.apply(held);
            false
        }
    }

    pub(super) fn flush(&self) -> Result<usize, StoreError> {
        if self.dirty.lock().is_empty() {
            self.metrics.unwritten_agents.set(0);
            return Ok(0);
        }
        // The records are taken inside the write (under `writing`): no write-through of a newer
        // record can land between this snapshot and its commit.
        let mut taken: Vec<Uuid> = Vec::new();
        let written = self.commit(|txn| {
            taken = self.dirty.lock().drain().collect();
            let records: Vec<(Uuid, Arc<AgentRecord>)> = {
                let agents = self.agents.lock();
                taken
                    .iter()
                    .filter_map(|u| agents.get(u).map(|r| (*u, r.clone())))
                    .collect()
            };
            let rows: Vec<(Uuid, Vec<u8>)> = records
                .into_iter()
                .map(|(u, r)| (u, r.encode_to_vec()))
                .collect();
            let mut table = txn.open_table(AGENTS)?;
            for (uid, bytes) in &rows {
                table.insert(uid.as_bytes().as_slice(), bytes.as_slice())?;
            }
            Ok(())
        });
        let mut dirty = self.dirty.lock();
        let n = taken.len();
        if written.is_err() {
            dirty.extend(taken);
        }
        self.metrics.unwritten_agents.set(dirty.len() as i64);
        written.map(|()| n)
    }

    /// Every agent record (of the shards `keep` names), taken under the lock.
    pub(super) fn records(&self, keep: impl Fn(&Uuid) -> bool) -> Vec<Arc<AgentRecord>> {
        let agents = self.agents.lock();
        agents
            .iter()
            .filter(|(uid, _)| keep(uid))
            .map(|(_, r)| r.clone())
            .collect()
    }

    pub(super) fn next_audit_seq(&self) -> u64 {
        let mut seq = self.audit_seq.lock();
        *seq += 1;
        *seq
    }

    /// Inserts an audit row in `txn`, and forgets rows past the retention.
    pub(super) fn insert_audit(
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
    pub(super) fn commit_audited(
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
