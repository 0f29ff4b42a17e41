//! Agent records live in memory and are written behind to a redb file about once a second: a
//! heartbeat from each of tens of thousands of agents must not cost an fsync each. A crash loses at
//! most that second of agent reports, which agents resend anyway (the next sequence gap asks them for
//! full state). Configs are written through, durably, before the API answers.

use super::{Store, StoreError, StoredConfig};
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

#[derive(Debug, Default)]
struct Deadlines {
    by_time: BTreeSet<(u64, Uuid)>,
    by_agent: HashMap<Uuid, u64>,
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
            deadlines: Mutex::new(Deadlines::default()),
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

    async fn put_agent(&self, record: AgentRecord) -> Result<(), StoreError> {
        let uid = Uuid::from_slice(&record.instance_uid)
            .map_err(|_| StoreError::Corrupt("agent record without a 16-byte uid".into()))?;
        self.agents.lock().expect("store lock").insert(uid, record);
        self.dirty.lock().expect("store lock").insert(uid);
        Ok(())
    }

    async fn visit_agents(
        &self,
        f: &mut (dyn for<'r> FnMut(&'r AgentRecord) + Send),
    ) -> Result<(), StoreError> {
        for rec in self.agents.lock().expect("store lock").values() {
            f(rec);
        }
        Ok(())
    }

    async fn arm_deadline(&self, uid: Uuid, at_unix_ms: u64) -> Result<(), StoreError> {
        let mut d = self.deadlines.lock().expect("store lock");
        if let Some(old) = d.by_agent.insert(uid, at_unix_ms) {
            d.by_time.remove(&(old, uid));
        }
        d.by_time.insert((at_unix_ms, uid));
        Ok(())
    }

    async fn clear_deadline(&self, uid: Uuid) -> Result<(), StoreError> {
        let mut d = self.deadlines.lock().expect("store lock");
        if let Some(old) = d.by_agent.remove(&uid) {
            d.by_time.remove(&(old, uid));
        }
        Ok(())
    }

    async fn take_due(&self, now_unix_ms: u64) -> Result<Vec<Uuid>, StoreError> {
        let mut d = self.deadlines.lock().expect("store lock");
        let mut due = Vec::new();
        while let Some(&(at, uid)) = d.by_time.first() {
            if at > now_unix_ms {
                break;
            }
            d.by_time.pop_first();
            d.by_agent.remove(&uid);
            due.push(uid);
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
            store.put_agent(record(uid, 5)).await.unwrap();
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

    #[tokio::test]
    async fn deadlines_fire_once_in_order_and_rearming_moves_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        store.arm_deadline(a, 100).await.unwrap();
        store.arm_deadline(b, 50).await.unwrap();
        store.arm_deadline(a, 300).await.unwrap();
        assert_eq!(store.take_due(200).await.unwrap(), vec![b]);
        assert!(store.take_due(200).await.unwrap().is_empty());
        store.clear_deadline(a).await.unwrap();
        assert!(store.take_due(1000).await.unwrap().is_empty());
    }
}
