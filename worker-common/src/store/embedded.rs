//! Agent records live in memory and are written behind to a redb file about once a second: a
//! heartbeat from each of tens of thousands of agents must not cost an fsync each. A crash loses at
//! most that second of agent reports, which agents resend anyway (the next sequence gap asks them for
//! full state). Configs are written through, durably, before the API answers.
//!
//! One process owns every shard for good, so fences always hold here; epochs matter only where
//! owners can change ([`super::RedisStore`]).

use super::{Deadline, Fence, ShardFilter, Store, StoreError, StoredConfig};
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

#[derive(Debug)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    agents: Mutex<HashMap<Uuid, AgentRecord>>,
    dirty: Mutex<HashSet<Uuid>>,
    deadlines: Mutex<Deadlines>,
    configs: Mutex<BTreeMap<String, StoredConfig>>,
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
        txn.commit().map_err(io)?;

        let mut agents = HashMap::new();
        let mut configs = BTreeMap::new();
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
            // Keys sort by name then version, so the last one seen per name is the latest.
            configs.insert(cfg.name.clone(), cfg);
        }
        drop(read);
        Ok(Self {
            db: Arc::new(db),
            agents: Mutex::new(agents),
            dirty: Mutex::new(HashSet::new()),
            deadlines: Mutex::new(Deadlines::new()),
            configs: Mutex::new(configs),
        })
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

    async fn put_config(&self, mut config: StoredConfig) -> Result<StoredConfig, StoreError> {
        // The lock is held across the write so versions of one name are assigned in order.
        let mut configs = self.configs.lock().expect("store lock");
        config.version = configs.get(&config.name).map_or(1, |c| c.version + 1);
        let key = format!("{}\0{:020}", config.name, config.version);
        let json = serde_json::to_vec(&config).map_err(io)?;
        let txn = self.db.begin_write().map_err(io)?;
        txn.open_table(CONFIGS)
            .map_err(io)?
            .insert(key.as_str(), json.as_slice())
            .map_err(io)?;
        txn.commit().map_err(io)?;
        configs.insert(config.name.clone(), config.clone());
        Ok(config)
    }

    async fn list_configs(&self) -> Result<Vec<StoredConfig>, StoreError> {
        Ok(self
            .configs
            .lock()
            .expect("store lock")
            .values()
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ConfigFile;

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
                selector: BTreeMap::from([("env".into(), "prod".into())]),
                files: BTreeMap::from([(
                    "c.yaml".into(),
                    ConfigFile {
                        body: "a: 1".into(),
                        content_type: "text/yaml".into(),
                    },
                )]),
                hash: "00".into(),
                created_unix_ms: 1,
                created_by: String::new(),
            };
            assert_eq!(store.put_config(cfg.clone()).await.unwrap().version, 1);
            assert_eq!(store.put_config(cfg).await.unwrap().version, 2);
            assert_eq!(store.flush().await.unwrap(), 1);
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let rec = store.get_agent(uid).await.unwrap().unwrap();
        assert_eq!(rec.sequence_num, 5);
        assert_eq!(rec.status, AgentStatus::Disconnected as i32);
        let configs = store.list_configs().await.unwrap();
        assert_eq!(configs.len(), 1);
        assert_eq!(configs[0].version, 2);
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
