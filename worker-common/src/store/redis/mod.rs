//! The Store of a cluster, in Redis, plus the shard leases and coordinator membership that decide
//! who may write it. Keys (region `r`, shard `n` as 4 digits):
//!
//! ```text
//! opamp:r:{sn}:lease      "<node>/<epoch>", PX ttl: who holds the shard
//! opamp:r:{sn}:epoch      the shard's current epoch, raised by every acquisition
//! opamp:r:{sn}:a:<uid>    hash: r = AgentRecord (protobuf), e = epoch of the write,
//!                         t = "<sequence_num> <last_seen_unix_ms>" when newer than r's (a touch),
//!                         c = the counters it adds 1 to (its Tally), h = its effective config's
//!                         SHA-256 in hex when kept apart (r has none then), d and k = the
//!                         description's and the health's fields when kept apart (r has neither
//!                         then; where r has one, its own is read)
//! opamp:r:{sn}:agents     set of the shard's uids (what visits iterate)
//! opamp:r:{sn}:dl         zset uid -> silence deadline (unix ms)
//! opamp:r:{sn}:counts     hash counter -> agents (total, connected, ...: the sums of the
//!                         records' tallies, field c of each); v = 1 once complete
//! opamp:r:coords          zset node -> last membership heartbeat (Redis time, ms)
//! opamp:r:formats         hash node -> the record layout its version reads (2: d and k
//!                         apart); records are written so once every live member reads it
//! opamp:r:ec:<sha256>     an effective config kept apart (EffectiveConfig, protobuf): one for
//!                         every agent reporting the same, named by field h of their records
//! opamp:r:ec-refs         hash sha256 -> records naming it (the body goes with the last)
//! opamp:r:{cfg}:latest    hash name -> JSON of the active version (what agents get)
//! opamp:r:{cfg}:seq       hash name -> last version number handed out
//! opamp:r:{cfg}:latest-version  hash name -> version held in :latest
//! opamp:r:{cfg}:v:<name>  hash version -> JSON
//! opamp:r:{cfg}:doc:<c>   hash id -> JSON of document id of collection c (rollouts, jobs)
//! opamp:r:{cfg}:rev:<c>   hash id -> the document's revision
//! opamp:r:audit           stream of audit entries (field e: JSON), trimmed by age
//! ```
//!
//! `{...}` is a hash tag: a shard's keys share one Redis Cluster slot, so each script touches one
//! slot. Every agent-state write is a script that first compares the shard's epoch with the
//! writer's: a writer whose lease was taken over fails with [`StoreError::Fenced`]. Epochs are
//! `max(previous + 1, Redis time in ms)`, so they keep rising even if Redis loses its data.
//!
//! An admin change writes its audit entry in the same script as the change, so neither exists
//! without the other. The audit stream lies outside the shard's slot: that needs one Redis
//! (a primary with replicas, or Sentinel), not Redis Cluster.

mod conn;
pub mod leases;
mod scripts;

use super::tally::{AgentCounts, Tally};
use super::types::{
    AuditEntry, AuditOf, AuditPage, AuditQuery, Claimed, Deadline, Doc, Fence, KeptParts,
    ShardFilter, Store, StoreError, StoredConfig, Touch, stored_record,
};
use crate::config::{RedisTls, redact};
use crate::names::{SHARD_COUNT, shard_of};
use async_trait::async_trait;
use conn::{Conn, parse_sentinel_url};
use flotilla_proto::bus::AgentRecord;
use flotilla_proto::opamp::EffectiveConfig;
use prost::Message;
use redis::AsyncCommands;
use scripts::{
    ACTIVATE_CONFIG, CLAIM, DEACTIVATE_CONFIG, DELETE, IMPORT_CONFIG, PUT_CONFIG, PUT_DOC, RECOUNT,
    SAVE, TOUCH,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use uuid::Uuid;

/// Audit entries read per round trip while filtering.
const AUDIT_PAGE: usize = 500;

/// Effective configs kept in memory once read, at most (the whole map is dropped past it; a
/// fleet runs few distinct configs).
const EFFECTIVE_CACHED: usize = 256;

#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    prefix: String,
    audit_retention: Duration,
    /// Effective configs kept apart, by SHA-256, as read (they never change under their hash).
    effective: Arc<parking_lot::Mutex<HashMap<Vec<u8>, Arc<EffectiveConfig>>>>,
    /// Whether every live coordinator reads records whose description and health are kept
    /// apart (fields d and k), as the last membership heartbeat found: only then are they
    /// written so ([`RedisStore::heartbeat`]). A version before reads field r alone.
    parts_apart: Arc<AtomicBool>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn io(e: redis::RedisError) -> StoreError {
    StoreError::Io(format!("redis: {e}"))
}

fn fenced_or_io(e: redis::RedisError, fence: Fence) -> StoreError {
    // The scripts answer `-FENCED` (an error reply) when the epoch moved on.
    if e.code() == Some("FENCED") || e.to_string().contains("FENCED") {
        StoreError::Fenced {
            shard: fence.shard,
            epoch: fence.epoch,
        }
    } else {
        io(e)
    }
}

fn cluster_refused(shown: &str) -> String {
    format!(
        "{shown} is a Redis Cluster, which Flotilla does not support: the audit stream and the \
         configs live outside the shards' slots. Use one Redis primary with replicas, and \
         Sentinel (redis+sentinel://host:port[,host:port]/<master-name>) for failover"
    )
}

/// A client of one Redis address; TLS settings need a `rediss://` URL.
fn client(url: &str, tls: &RedisTls) -> Result<redis::Client, String> {
    let shown = redact(url);
    if tls.ca.is_none() && tls.client.is_none() {
        return redis::Client::open(url).map_err(|e| format!("invalid Redis URL {shown}: {e}"));
    }
    if !url.starts_with("rediss://") {
        return Err(format!(
            "--redis-ca, --redis-cert and --redis-key need a rediss:// URL, not {shown}"
        ));
    }
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let client_tls = match &tls.client {
        Some((cert, key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        None => None,
    };
    let root_cert = tls.ca.as_deref().map(read).transpose()?;
    redis::Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(|e| format!("invalid Redis URL {shown}: {e}"))
}

impl RedisStore {
    /// Connects to `url`: `redis://` or `rediss://` (one address; the connection re-establishes
    /// itself after Redis restarts) or `redis+sentinel://` (the primary the Sentinels name, found
    /// again after a failover). Fails at once if Redis does not answer, so a wrong URL is
    /// reported at start, and refuses Redis Cluster, whose slots the audit stream and the
    /// configs' keys would span.
    pub async fn connect(url: &str, region: &str, tls: &RedisTls) -> Result<Self, String> {
        let shown = redact(url);
        let tls_given = tls.ca.is_some() || tls.client.is_some();
        let conn = if url.starts_with("redis+sentinel://") {
            if tls_given {
                return Err(format!(
                    "--redis-ca, --redis-cert and --redis-key are not supported with Sentinel \
                     ({shown}): use rediss:// to one address, or Sentinel without TLS"
                ));
            }
            let parsed = parse_sentinel_url(url)
                .map_err(|e| format!("invalid Redis Sentinel URL {shown}: {e}"))?;
            Conn::sentinel(&parsed).await.map_err(|e| {
                format!(
                    "cannot reach the Redis primary {:?} through the Sentinels of {shown}: {e}",
                    parsed.master
                )
            })?
        } else if url.starts_with("redis+cluster://") || url.starts_with("rediss+cluster://") {
            return Err(cluster_refused(&shown));
        } else {
            Conn::direct(client(url, tls)?)
                .await
                .map_err(|e| format!("cannot connect to Redis at {shown}: {e}"))?
        };
        // A user whose ACL forbids INFO (it is in @dangerous) cannot tell; scripts on a Redis
        // Cluster would fail at once with CROSSSLOT anyway.
        let info: Option<String> = match redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut conn.clone())
            .await
        {
            Ok(info) => Some(info),
            Err(e) if e.code() == Some("NOPERM") => None,
            Err(e) => return Err(format!("cannot query Redis at {shown}: {e}")),
        };
        if info.is_some_and(|i| i.lines().any(|l| l.trim() == "cluster_enabled:1")) {
            return Err(cluster_refused(&shown));
        }
        Ok(Self {
            conn,
            prefix: format!("opamp:{region}"),
            audit_retention: super::types::DEFAULT_AUDIT_RETENTION,
            effective: Default::default(),
            parts_apart: Default::default(),
        })
    }

    /// Forgets audit entries older than `retention` (trimmed as entries are added).
    pub fn with_audit_retention(mut self, retention: Duration) -> Self {
        self.audit_retention = retention;
        self
    }

    fn audit_key(&self) -> String {
        format!("{}:audit", self.prefix)
    }

    /// The stream arguments of an audit entry: the trim horizon (the oldest stream id kept) and
    /// the entry's JSON; an empty JSON writes nothing.
    fn audit_args(&self, entry: Option<&AuditEntry>) -> Result<(u64, String), StoreError> {
        let Some(entry) = entry else {
            return Ok((0, String::new()));
        };
        // The stream id is Redis's clock; `at_unix_ms` is the writer's. Trimming by id (MINID)
        // keeps about the retention of history; `~` lets Redis trim whole nodes, cheaply.
        let keep = u64::try_from(self.audit_retention.as_millis()).unwrap_or(u64::MAX);
        let json = serde_json::to_string(entry).map_err(|e| StoreError::Io(e.to_string()))?;
        Ok((entry.at_unix_ms.saturating_sub(keep), json))
    }

    fn shard_key(&self, shard: u16, what: &str) -> String {
        format!("{}:{{s{shard:04}}}:{what}", self.prefix)
    }

    fn cfg_key(&self, what: &str) -> String {
        format!("{}:{{cfg}}:{what}", self.prefix)
    }

    fn agent_key(&self, uid: Uuid) -> String {
        self.shard_key(shard_of(uid.as_bytes()), &format!("a:{uid}"))
    }

    /// Where the bodies of effective configs kept apart are: this prefix and the SHA-256 in hex.
    fn effective_prefix(&self) -> String {
        format!("{}:ec:", self.prefix)
    }

    /// The references to each body kept apart (hash: SHA-256 in hex -> records naming it).
    fn effective_refs_key(&self) -> String {
        format!("{}:ec-refs", self.prefix)
    }

    /// Reads the records under `keys` (without the effective configs kept apart), 512 a round
    /// trip, and calls `f` with each one in the keys' order (None where there is none).
    async fn read_records(
        &self,
        keys: &[String],
        f: &mut (dyn for<'r> FnMut(Option<&'r AgentRecord>) + Send),
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        for chunk in keys.chunks(512) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.hmget(key, ROW_FIELDS);
            }
            let rows: Vec<Row> = pipe.query_async(&mut conn).await.map_err(io)?;
            for row in rows {
                f(record_of(row)?.as_ref());
            }
        }
        Ok(())
    }

    /// The keys SAVE and DELETE take, in their order: the shard's epoch, the agent's hash, the
    /// shard's agents and deadlines, the audit stream, the shard's counts, the references to
    /// effective configs kept apart.
    fn agent_write_keys(&self, fence: Fence, uid: Uuid) -> [String; 7] {
        [
            self.shard_key(fence.shard, "epoch"),
            self.agent_key(uid),
            self.shard_key(fence.shard, "agents"),
            self.shard_key(fence.shard, "dl"),
            self.audit_key(),
            self.shard_key(fence.shard, "counts"),
            self.effective_refs_key(),
        ]
    }

    fn lease_value(node: &str, epoch: u64) -> String {
        format!("{node}/{epoch}")
    }

    /// The agent keys of `shards`, one pipelined round trip per 128 shards.
    async fn agent_keys(&self, shards: &[u16]) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        let mut keys = Vec::new();
        for chunk in shards.chunks(128) {
            let mut pipe = redis::pipe();
            for shard in chunk {
                pipe.smembers(self.shard_key(*shard, "agents"));
            }
            let members: Vec<Vec<String>> = pipe.query_async(&mut conn).await.map_err(io)?;
            for (shard, uids) in chunk.iter().zip(members) {
                keys.extend(
                    uids.iter()
                        .map(|uid| self.shard_key(*shard, &format!("a:{uid}"))),
                );
            }
        }
        Ok(keys)
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn get_agent(&self, uid: Uuid) -> Result<Option<AgentRecord>, StoreError> {
        let row: Row = self
            .conn
            .clone()
            .hmget(self.agent_key(uid), ROW_FIELDS)
            .await
            .map_err(io)?;
        let Some(mut rec) = record_of(row)? else {
            return Ok(None);
        };
        if rec.effective_config.is_none() && !rec.effective_config_sha256.is_empty() {
            rec.effective_config = self
                .effective_config(&rec.effective_config_sha256)
                .await?
                .map(Box::new);
            if rec.effective_config.is_none() {
                return Err(StoreError::Corrupt(format!(
                    "agent {uid} names an effective config the store does not hold"
                )));
            }
        }
        Ok(Some(rec))
    }

    async fn effective_config(&self, sha256: &[u8]) -> Result<Option<EffectiveConfig>, StoreError> {
        if let Some(cached) = self.effective.lock().get(sha256) {
            return Ok(Some(EffectiveConfig::clone(cached)));
        }
        let key = format!("{}{}", self.effective_prefix(), hex::encode(sha256));
        let body: Option<Vec<u8>> = self.conn.clone().get(key).await.map_err(io)?;
        let Some(body) = body else {
            return Ok(None);
        };
        let config = EffectiveConfig::decode(body.as_slice())
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut cache = self.effective.lock();
        if cache.len() >= EFFECTIVE_CACHED {
            cache.clear();
        }
        cache.insert(sha256.to_vec(), Arc::new(config.clone()));
        Ok(Some(config))
    }

    async fn save_agent_keeping(
        &self,
        fence: Fence,
        record: &AgentRecord,
        deadline: Deadline,
        audit: Option<&AuditEntry>,
        kept: KeptParts,
    ) -> Result<bool, StoreError> {
        let uid = Uuid::from_slice(&record.instance_uid)
            .map_err(|_| StoreError::Corrupt("agent record without a 16-byte uid".into()))?;
        let (mode, at) = deadline_args(deadline);
        let (horizon, audit) = self.audit_args(audit)?;
        let stored = stored_record(record)?;
        let sha = stored
            .apart_sha256
            .as_deref()
            .map(hex::encode)
            .unwrap_or_default();
        let apart = self.parts_apart.load(Ordering::Relaxed);
        let joined;
        let (bytes, description, health) = if apart {
            (
                &stored.record,
                part_args(&stored.description, kept.description),
                part_args(&stored.health, kept.health),
            )
        } else {
            joined = stored.joined();
            (&joined, ("-", &[][..]), ("-", &[][..]))
        };
        let tally = Tally::of(record).names();
        let save = |body: &[u8]| {
            let mut script = SAVE.prepare_invoke();
            for key in self.agent_write_keys(fence, uid) {
                script.key(key);
            }
            script
                .arg(fence.epoch.to_string())
                .arg(bytes.as_slice())
                .arg(uid.to_string())
                .arg(mode)
                .arg(at)
                .arg(horizon)
                .arg(audit.as_str())
                .arg(tally.as_str())
                .arg(sha.as_str())
                .arg(body)
                .arg(self.effective_prefix())
                .arg(description.0)
                .arg(description.1)
                .arg(health.0)
                .arg(health.1);
            script
        };
        // The body goes only when the store lacks it: most agents report what others did.
        let first: Result<i64, _> = save(&[]).invoke_async(&mut self.conn.clone()).await;
        match first {
            Err(e) if e.code() == Some("NEEDBODY") || e.to_string().contains("NEEDBODY") => {
                let _: i64 = save(stored.apart_body())
                    .invoke_async(&mut self.conn.clone())
                    .await
                    .map_err(|e| fenced_or_io(e, fence))?;
            }
            other => {
                other.map_err(|e| fenced_or_io(e, fence))?;
            }
        }
        Ok(apart)
    }

    async fn touch_agent(
        &self,
        fence: Fence,
        touch: Touch,
        deadline: Deadline,
    ) -> Result<bool, StoreError> {
        let (mode, at) = deadline_args(deadline);
        let n: i64 = TOUCH
            .key(self.shard_key(fence.shard, "epoch"))
            .key(self.agent_key(touch.uid))
            .key(self.shard_key(fence.shard, "dl"))
            .arg(fence.epoch.to_string())
            .arg(touch.encode())
            .arg(touch.uid.to_string())
            .arg(mode)
            .arg(at)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| fenced_or_io(e, fence))?;
        Ok(n == 1)
    }

    async fn delete_agent(
        &self,
        fence: Fence,
        uid: Uuid,
        audit: Option<&AuditEntry>,
    ) -> Result<bool, StoreError> {
        let (horizon, audit) = self.audit_args(audit)?;
        let mut script = DELETE.prepare_invoke();
        for key in self.agent_write_keys(fence, uid) {
            script.key(key);
        }
        let n: i64 = script
            .arg(fence.epoch.to_string())
            .arg(uid.to_string())
            .arg(horizon)
            .arg(audit)
            .arg(self.effective_prefix())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| fenced_or_io(e, fence))?;
        Ok(n == 1)
    }

    async fn visit_agents(
        &self,
        shards: ShardFilter<'_>,
        f: &mut (dyn for<'r> FnMut(&'r AgentRecord) + Send),
    ) -> Result<(), StoreError> {
        let wanted: Vec<u16> = (0..SHARD_COUNT).filter(|s| shards(*s)).collect();
        let keys = self.agent_keys(&wanted).await?;
        self.read_records(&keys, &mut |rec| {
            if let Some(rec) = rec {
                f(rec);
            }
        })
        .await
    }

    async fn agent_counts(&self) -> Result<Option<AgentCounts>, StoreError> {
        let mut conn = self.conn.clone();
        let mut counts = AgentCounts::default();
        let shards: Vec<u16> = (0..SHARD_COUNT).collect();
        for chunk in shards.chunks(256) {
            let mut pipe = redis::pipe();
            for shard in chunk {
                pipe.hgetall(self.shard_key(*shard, "counts"))
                    .scard(self.shard_key(*shard, "agents"));
            }
            let rows: Vec<(HashMap<String, i64>, u64)> =
                pipe.query_async(&mut conn).await.map_err(io)?;
            for (shard_counts, agents) in rows {
                if agents > 0 && !shard_counts.contains_key("v") {
                    return Ok(None);
                }
                for (name, n) in shard_counts {
                    counts.add_named(&name, n);
                }
            }
        }
        Ok(Some(counts))
    }

    async fn count_shard(&self, fence: Fence) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let counts_key = self.shard_key(fence.shard, "counts");
        let counted: bool = conn.hexists(&counts_key, "v").await.map_err(io)?;
        if counted {
            return Ok(false);
        }
        let keys = self.agent_keys(&[fence.shard]).await?;
        let mut tallies = Vec::with_capacity(keys.len());
        self.read_records(&keys, &mut |rec| {
            tallies.push(rec.map(|r| Tally::of(r).names()).unwrap_or_default());
        })
        .await?;
        let mut script = RECOUNT.prepare_invoke();
        script
            .key(self.shard_key(fence.shard, "epoch"))
            .key(self.shard_key(fence.shard, "agents"))
            .key(&counts_key)
            .arg(fence.epoch.to_string());
        for (key, tally) in keys.iter().zip(&tallies) {
            script.key(key).arg(tally);
        }
        let _: i64 = script
            .invoke_async(&mut conn)
            .await
            .map_err(|e| fenced_or_io(e, fence))?;
        Ok(true)
    }

    async fn claim_due(
        &self,
        fence: Fence,
        now_unix_ms: u64,
        retry_ms: u64,
    ) -> Result<Claimed, StoreError> {
        let (due, next): (Vec<String>, Option<String>) = CLAIM
            .key(self.shard_key(fence.shard, "epoch"))
            .key(self.shard_key(fence.shard, "dl"))
            .arg(fence.epoch.to_string())
            .arg(now_unix_ms)
            .arg(now_unix_ms + retry_ms)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| fenced_or_io(e, fence))?;
        let due = due
            .iter()
            .map(|s| Uuid::parse_str(s).map_err(|e| StoreError::Corrupt(e.to_string())))
            .collect::<Result<_, _>>()?;
        // A score as Redis writes a double: whole milliseconds print without a fraction.
        let next_unix_ms = next
            .map(|score| {
                score
                    .parse::<f64>()
                    .map(|ms| ms as u64)
                    .map_err(|e| StoreError::Corrupt(format!("deadline {score:?}: {e}")))
            })
            .transpose()?;
        Ok(Claimed { due, next_unix_ms })
    }

    async fn put_config(
        &self,
        mut config: StoredConfig,
        activate: bool,
        audit: AuditOf<'_>,
    ) -> Result<StoredConfig, StoreError> {
        let mut conn = self.conn.clone();
        let seq = format!("{}:{{cfg}}:seq", self.prefix);
        // Versions are handed out atomically first, then the version is written; a crash in
        // between leaves a gap in the numbers, never two configs with one number.
        let version: u64 = conn.hincr(&seq, &config.name, 1).await.map_err(io)?;
        config.version = version;
        let json = serde_json::to_string(&config).map_err(|e| StoreError::Io(e.to_string()))?;
        let (horizon, audit) = self.audit_args(Some(&audit(&config)))?;
        let _: i64 = PUT_CONFIG
            .key(self.cfg_key("latest-version"))
            .key(self.cfg_key("latest"))
            .key(self.cfg_key(&format!("v:{}", config.name)))
            .key(self.audit_key())
            .arg(&config.name)
            .arg(version)
            .arg(json)
            .arg(if activate { "1" } else { "0" })
            .arg(horizon)
            .arg(audit)
            .invoke_async(&mut conn)
            .await
            .map_err(io)?;
        Ok(config)
    }

    async fn import_config(
        &self,
        config: StoredConfig,
        audit: Option<&AuditEntry>,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(&config).map_err(|e| StoreError::Io(e.to_string()))?;
        let (horizon, audit) = self.audit_args(audit)?;
        let _: i64 = IMPORT_CONFIG
            .key(self.cfg_key("latest-version"))
            .key(self.cfg_key("latest"))
            .key(self.cfg_key(&format!("v:{}", config.name)))
            .key(format!("{}:{{cfg}}:seq", self.prefix))
            .key(self.audit_key())
            .arg(&config.name)
            .arg(config.version)
            .arg(json)
            .arg(horizon)
            .arg(audit)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(io)?;
        Ok(())
    }

    async fn activate_config(
        &self,
        name: &str,
        version: u64,
    ) -> Result<Option<StoredConfig>, StoreError> {
        let json: Option<String> = ACTIVATE_CONFIG
            .key(self.cfg_key("latest-version"))
            .key(self.cfg_key("latest"))
            .key(self.cfg_key(&format!("v:{name}")))
            .arg(name)
            .arg(version)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(io)?;
        json.map(|j| parse_json(&j)).transpose()
    }

    async fn deactivate_config(
        &self,
        name: &str,
        audit: Option<&AuditEntry>,
    ) -> Result<bool, StoreError> {
        let (horizon, audit) = self.audit_args(audit)?;
        let n: i64 = DEACTIVATE_CONFIG
            .key(self.cfg_key("latest-version"))
            .key(self.cfg_key("latest"))
            .key(self.audit_key())
            .arg(name)
            .arg(horizon)
            .arg(audit)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(io)?;
        Ok(n == 1)
    }

    async fn list_configs(&self) -> Result<Vec<StoredConfig>, StoreError> {
        let all: Vec<(String, String)> = self
            .conn
            .clone()
            .hgetall(self.cfg_key("latest"))
            .await
            .map_err(io)?;
        let mut configs = all
            .iter()
            .map(|(_, json)| parse_json::<StoredConfig>(json))
            .collect::<Result<Vec<_>, _>>()?;
        configs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(configs)
    }

    async fn config_versions(&self, name: &str) -> Result<Vec<StoredConfig>, StoreError> {
        let all: Vec<(u64, String)> = self
            .conn
            .clone()
            .hgetall(self.cfg_key(&format!("v:{name}")))
            .await
            .map_err(io)?;
        let mut versions = all
            .iter()
            .map(|(_, json)| parse_json::<StoredConfig>(json))
            .collect::<Result<Vec<_>, _>>()?;
        versions.sort_by_key(|c| c.version);
        Ok(versions)
    }

    async fn put_doc(
        &self,
        collection: &str,
        id: &str,
        expected_revision: u64,
        json: &str,
        audit: Option<&AuditEntry>,
    ) -> Result<bool, StoreError> {
        let (horizon, audit) = self.audit_args(audit)?;
        let n: i64 = PUT_DOC
            .key(self.cfg_key(&format!("doc:{collection}")))
            .key(self.cfg_key(&format!("rev:{collection}")))
            .key(self.audit_key())
            .arg(id)
            .arg(expected_revision)
            .arg(json)
            .arg(horizon)
            .arg(audit)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(io)?;
        Ok(n == 1)
    }

    async fn get_doc(&self, collection: &str, id: &str) -> Result<Option<Doc>, StoreError> {
        let (json, rev): (Option<String>, Option<u64>) = redis::pipe()
            .hget(self.cfg_key(&format!("doc:{collection}")), id)
            .hget(self.cfg_key(&format!("rev:{collection}")), id)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(io)?;
        Ok(json.map(|json| Doc {
            id: id.to_owned(),
            revision: rev.unwrap_or(0),
            json,
        }))
    }

    async fn list_docs(&self, collection: &str) -> Result<Vec<Doc>, StoreError> {
        let (docs, revs): (
            Vec<(String, String)>,
            std::collections::HashMap<String, u64>,
        ) = redis::pipe()
            .hgetall(self.cfg_key(&format!("doc:{collection}")))
            .hgetall(self.cfg_key(&format!("rev:{collection}")))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(io)?;
        let mut out: Vec<Doc> = docs
            .into_iter()
            .map(|(id, json)| Doc {
                revision: revs.get(&id).copied().unwrap_or(0),
                id,
                json,
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn append_audit(&self, mut entry: AuditEntry) -> Result<AuditEntry, StoreError> {
        let (horizon, json) = self.audit_args(Some(&entry))?;
        let id: String = redis::cmd("XADD")
            .arg(self.audit_key())
            .arg("MINID")
            .arg("~")
            .arg(horizon)
            .arg("*")
            .arg("e")
            .arg(json)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(io)?;
        entry.id = id;
        Ok(entry)
    }

    async fn query_audit(&self, query: &AuditQuery) -> Result<AuditPage, StoreError> {
        let key = self.audit_key();
        let mut conn = self.conn.clone();
        let mut out = AuditPage::default();
        let mut end = "+".to_owned();
        loop {
            let page: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
                .arg(&key)
                .arg(&end)
                .arg("-")
                .arg("COUNT")
                .arg(AUDIT_PAGE)
                .query_async(&mut conn)
                .await
                .map_err(io)?;
            let full = page.len() == AUDIT_PAGE;
            for (id, fields) in &page {
                let Some((_, json)) = fields.iter().find(|(f, _)| f == "e") else {
                    continue;
                };
                let mut entry: AuditEntry = parse_json(json)?;
                entry.id.clone_from(id);
                // Entries are newest first: once they are older than `since`, none can match.
                if query.since_unix_ms.is_some_and(|s| entry.at_unix_ms < s) {
                    return Ok(out);
                }
                if !out.offer(query, entry, json.len()) {
                    return Ok(out);
                }
            }
            match page.last() {
                Some((id, _)) if full => end = format!("({id}"),
                _ => return Ok(out),
            }
        }
    }
}

/// A save's or touch's deadline change, as the scripts take it.
fn deadline_args(deadline: Deadline) -> (&'static str, u64) {
    match deadline {
        Deadline::Arm(at) => ("arm", at),
        Deadline::Clear => ("clear", 0),
        Deadline::Keep => ("keep", 0),
    }
}

/// A part of a record kept apart, as SAVE takes it: '=' left as stored, '+' written (the
/// bytes), '-' removed (the record has none).
fn part_args(field: &[u8], kept: bool) -> (&'static str, &[u8]) {
    match (kept, field.is_empty()) {
        (true, _) => ("=", &[]),
        (false, false) => ("+", field),
        (false, true) => ("-", &[]),
    }
}

/// The agent's hash fields a record is read from, in [`Row`]'s order.
const ROW_FIELDS: &[&str] = &["r", "t", "d", "k"];

/// An agent's hash fields `r` (the record), `t` (the touch since, if any), `d` and `k` (its
/// description's and health's fields, when kept apart).
type Row = (
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
);

/// An agent's record from its hash fields. A part kept apart is read only where `r` lacks it: a
/// version that kept no parts apart wrote `r` whole and left them as they were.
fn record_of(row: Row) -> Result<Option<AgentRecord>, StoreError> {
    let (Some(bytes), touch, description, health) = row else {
        return Ok(None);
    };
    let corrupt = |e: prost::DecodeError| StoreError::Corrupt(e.to_string());
    let mut rec = AgentRecord::decode(bytes.as_slice()).map_err(corrupt)?;
    if let Some(d) = description.filter(|_| rec.description.is_none()) {
        rec.merge(d.as_slice()).map_err(corrupt)?;
    }
    if let Some(k) = health.filter(|_| rec.health.is_none()) {
        rec.merge(k.as_slice()).map_err(corrupt)?;
    }
    if let Some(t) = touch {
        Touch::decode_onto(&t, &mut rec)?;
    }
    Ok(Some(rec))
}

fn parse_json<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(e.to_string()))
}
