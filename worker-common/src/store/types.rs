//! What every store is: the [`Store`] trait, the records and documents it keeps, its errors, and
//! the fences that guard agent writes. [`super::EmbeddedStore`] and [`super::RedisStore`]
//! implement it.

use super::tally::AgentCounts;
use crate::selector::Selector;
use async_trait::async_trait;
use flotilla_proto::bus::AgentRecord;
use flotilla_proto::opamp::EffectiveConfig;
use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use thiserror::Error;
use uuid::Uuid;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("store I/O failed: {0}")]
    Io(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("shard {shard} is no longer held under epoch {epoch}")]
    Fenced { shard: u16, epoch: u64 },
}

/// The right to write one shard's agent state: the epoch of the writer's lease on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub shard: u16,
    pub epoch: u64,
}

/// What a save does to the agent's silence deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// (Re-)arm it at this time (unix ms).
    Arm(u64),
    /// The agent cannot be silent (disconnected, or already silent): no deadline.
    Clear,
    /// Leave it as it is.
    Keep,
}

/// Effective configs of at least this many encoded bytes are kept apart from the records that
/// report them, once for every agent reporting the same (a stores that can: Redis).
pub const SHARED_EFFECTIVE_CONFIG_MIN: usize = 1024;

/// An agent record as stored ([`stored_record`]).
pub struct StoredRecord {
    /// The record's encoding, in the form every reader decodes, but for its description and
    /// health (`description`, `health`): an owner's copy's encoded parts (bus.proto
    /// `copied_description`, `copied_components`) are written as the description and health they
    /// stand for; without the effective config when it is kept apart (naming it by its SHA-256
    /// then, and never naming another).
    pub record: Vec<u8>,
    /// The description's and the health's fields, encoded as in the record (key and length
    /// first; empty when the record has none): `record` followed by both is the whole record,
    /// and a store may keep them apart, so that a save that changes neither need not write them.
    pub description: Vec<u8>,
    pub health: Vec<u8>,
    /// The SHA-256 the effective config is kept apart under, when it is: its OpAMP config hash
    /// when the record has it (a hash of every file's name, content type and body), else a hash
    /// of its encoding.
    pub apart_sha256: Option<Vec<u8>>,
    /// The record's whole encoding, and where the effective config's is in it (empty when it is
    /// not kept apart): read only when the store lacks that config ([`StoredRecord::apart_body`]).
    whole: Vec<u8>,
    body: std::ops::Range<usize>,
}

impl StoredRecord {
    /// The encoding of the effective config kept apart (empty if it is not).
    pub fn apart_body(&self) -> &[u8] {
        &self.whole[self.body.clone()]
    }

    /// The record with its description and health: what a store that keeps no parts apart
    /// writes.
    pub fn joined(&self) -> Vec<u8> {
        [&self.record[..], &self.description, &self.health].concat()
    }
}

/// Which parts of a record ([`StoredRecord::description`], [`StoredRecord::health`]) a save may
/// leave as the store has them: the caller knows they are stored apart, as they are in the
/// record saved ([`Store::save_agent_keeping`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeptParts {
    pub description: bool,
    pub health: bool,
}

/// AgentRecord's field numbers (bus.proto) that [`stored_record`] rewrites.
const RECORD_DESCRIPTION: u32 = 4;
const RECORD_HEALTH: u32 = 5;
const RECORD_EFFECTIVE_CONFIG: u32 = 6;
const RECORD_EFFECTIVE_CONFIG_SHA256: u32 = 42;
const RECORD_COPIED_DESCRIPTION: u32 = 44;
const RECORD_COPIED_COMPONENTS: u32 = 45;
/// ComponentHealth's field number of its map of components (opamp.proto).
const HEALTH_COMPONENTS: u32 = 6;

/// `rec` as a store keeps it, made from `rec`'s encoding rather than from a decoded copy of it:
/// a collector's record has dozens of health components and an owner's copy holds them encoded
/// (decoding them to encode them again was a fifth of an owner's work during a push). Protobuf
/// readers take fields in any order, so the rewritten fields are appended; a message's field
/// given twice is merged, so the health is its root's encoding followed by its components'.
/// The effective config is kept apart when it has [`SHARED_EFFECTIVE_CONFIG_MIN`] bytes or more.
/// `rec` may be in the owner's copy's form or not.
pub fn stored_record(rec: &AgentRecord) -> Result<StoredRecord, StoreError> {
    let whole = rec.encode_to_vec();
    let mut record = Vec::with_capacity(whole.len());
    let (mut description, mut copied_description) = (None, None);
    let (mut health, mut components) = (None, None);
    let mut body = None;
    each_field(&whole, |number, value, field| match number {
        RECORD_DESCRIPTION => description = Some(value),
        RECORD_COPIED_DESCRIPTION => copied_description = Some(value),
        RECORD_HEALTH => health = Some(value),
        RECORD_COPIED_COMPONENTS => components = Some(value),
        RECORD_EFFECTIVE_CONFIG if value.len() >= SHARED_EFFECTIVE_CONFIG_MIN => {
            body = Some(value);
        }
        RECORD_EFFECTIVE_CONFIG_SHA256 => {}
        _ => record.extend_from_slice(field),
    })?;
    let mut description_field = Vec::new();
    if let Some(d) = copied_description.or(description) {
        push_delimited(&mut description_field, RECORD_DESCRIPTION, &[d]);
    }
    let mut health_field = Vec::new();
    match (health, components) {
        (None, None) => {}
        (Some(root), None) => push_delimited(&mut health_field, RECORD_HEALTH, &[root]),
        // The copy's components replace any the root has (it has none in the copy's form).
        (root, Some(components)) => {
            let mut kept = Vec::new();
            each_field(root.unwrap_or_default(), |number, _, field| {
                if number != HEALTH_COMPONENTS {
                    kept.extend_from_slice(field);
                }
            })?;
            push_delimited(&mut health_field, RECORD_HEALTH, &[&kept, components]);
        }
    }
    let apart_sha256 = body.map(|body| {
        let sha256 = if rec.effective_config_hash.len() == 32 {
            rec.effective_config_hash.clone()
        } else {
            Sha256::digest(body).to_vec()
        };
        push_delimited(&mut record, RECORD_EFFECTIVE_CONFIG_SHA256, &[&sha256]);
        sha256
    });
    // Where the body is in `whole`: a slice of it.
    let body = body.map_or(0..0, |b| {
        let start = b.as_ptr() as usize - whole.as_ptr() as usize;
        start..start + b.len()
    });
    Ok(StoredRecord {
        record,
        description: description_field,
        health: health_field,
        apart_sha256,
        whole,
        body,
    })
}

/// Calls `f` with every field of encoded message `msg`: its number, its contents and the
/// field's whole encoding (key and length with them). Err if `msg` does not parse.
fn each_field<'a>(
    msg: &'a [u8],
    mut f: impl FnMut(u32, &'a [u8], &'a [u8]),
) -> Result<(), StoreError> {
    let mut rest = msg;
    while !rest.is_empty() {
        let start = msg.len() - rest.len();
        let (number, _, value) = crate::codec::next_field(&mut rest).ok_or_else(|| {
            StoreError::Corrupt("an agent record's encoding does not parse".into())
        })?;
        f(number, value, &msg[start..msg.len() - rest.len()]);
    }
    Ok(())
}

/// Appends a length-delimited field `number` whose contents are `parts`, one after another.
fn push_delimited(out: &mut Vec<u8>, number: u32, parts: &[&[u8]]) {
    use prost::encoding::{WireType, encode_key, encode_varint};
    encode_key(number, WireType::LengthDelimited, out);
    encode_varint(parts.iter().map(|p| p.len() as u64).sum(), out);
    for part in parts {
        out.extend_from_slice(part);
    }
}

/// What changes in an agent's record when it is heard from and nothing else changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Touch {
    pub uid: Uuid,
    pub sequence_num: u64,
    pub last_seen_unix_ms: u64,
}

impl Touch {
    /// The touch that turns a record into `rec`, when `rec` differs from it in nothing else.
    pub fn of(rec: &AgentRecord) -> Option<Self> {
        Some(Self {
            uid: Uuid::from_slice(&rec.instance_uid).ok()?,
            sequence_num: rec.sequence_num,
            last_seen_unix_ms: rec.last_seen_unix_ms,
        })
    }

    pub fn apply(&self, rec: &mut AgentRecord) {
        rec.sequence_num = self.sequence_num;
        rec.last_seen_unix_ms = self.last_seen_unix_ms;
    }

    /// As stored beside a record: `"<sequence_num> <last_seen_unix_ms>"`.
    pub fn encode(&self) -> String {
        format!("{} {}", self.sequence_num, self.last_seen_unix_ms)
    }

    /// A stored touch applied to `rec` (of `uid`); Err if it is not one.
    pub fn decode_onto(text: &[u8], rec: &mut AgentRecord) -> Result<(), StoreError> {
        let bad = || {
            StoreError::Corrupt(format!(
                "bad agent touch {:?}",
                String::from_utf8_lossy(text)
            ))
        };
        let text = std::str::from_utf8(text).map_err(|_| bad())?;
        let (seq, seen) = text.split_once(' ').ok_or_else(bad)?;
        rec.sequence_num = seq.parse().map_err(|_| bad())?;
        rec.last_seen_unix_ms = seen.parse().map_err(|_| bad())?;
        Ok(())
    }
}

/// Which shards a visit covers.
pub type ShardFilter<'a> = &'a (dyn Fn(u16) -> bool + Sync);

/// One immutable version of a named config: a bundle of desired state for the agents its selector
/// matches. Each aspect (files, packages, connection settings) is optional; an agent gets each
/// aspect from the most specific matching config that defines it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredConfig {
    pub name: String,
    pub version: u64,
    /// Which agents get this config. Stored as its text; older data holds a map of pairs.
    #[serde(default)]
    pub selector: Selector,
    /// The AgentConfigMap sent as remote config.
    #[serde(default)]
    pub files: BTreeMap<String, ConfigFile>,
    /// Hex of the OpAMP config_hash of `files`.
    pub hash: String,
    /// Packages offered (PackagesAvailable), by package name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub packages: BTreeMap<String, PackageOffer>,
    /// Connection settings offered: heartbeat interval and own-telemetry destinations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<AgentSettings>,
    pub created_unix_ms: u64,
    /// Who stored this version (the API caller's token name).
    #[serde(default)]
    pub created_by: String,
    /// Why this version exists when it was not typed in, e.g. "rollback to version 2".
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comment: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigFile {
    pub body: String,
    pub content_type: String,
}

/// One package of a PackagesAvailable offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageOffer {
    /// "top_level" (the agent itself) or "addon".
    #[serde(default = "PackageOffer::default_type", rename = "type")]
    pub kind: String,
    pub version: String,
    pub download_url: String,
    /// Hex SHA-256 of the file at `download_url`.
    #[serde(default)]
    pub content_hash: String,
    /// The file's signature, base64 (checked by the agent, passed through as bytes).
    #[serde(default)]
    pub signature: String,
    /// HTTP headers the agent sends when downloading.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

impl PackageOffer {
    fn default_type() -> String {
        "top_level".into()
    }
}

/// Connection settings offered to the agents of a config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSettings {
    /// Heartbeat interval offered in OpAMP connection settings (agents that report heartbeats).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub heartbeat_interval: Option<std::time::Duration>,
    /// Where agents that report their own metrics send them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_metrics: Option<TelemetryDestination>,
    /// Flotilla keeps the agents' own metrics and forwards a copy to the gateways' destination of
    /// this name (`--agent-metrics-forward NAME=URL`): instead of `own_metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_metrics_forward: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_traces: Option<TelemetryDestination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_logs: Option<TelemetryDestination>,
}

/// An OTLP destination for an agent's own telemetry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryDestination {
    pub destination_endpoint: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// A mutable JSON document with a revision that every successful write raises by one; writes name
/// the revision they read (compare-and-set), so concurrent writers never lose each other's change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doc {
    pub id: String,
    pub revision: u64,
    pub json: String,
}

/// One entry of the audit log: who changed what, from what to what, when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Assigned by the store; orders entries ("<unix ms>-<n>").
    #[serde(default)]
    pub id: String,
    pub at_unix_ms: u64,
    pub caller: String,
    /// E.g. "config.put", "labels.set", "rollout.start".
    pub action: String,
    /// What was changed, as "<kind>/<name>", e.g. "config/otel", "agent/<uid>", "rollout/<id>".
    pub object: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<serde_json::Value>,
}

/// Which audit entries to read: newest first, at most `limit`, and no more once their JSON
/// comes to `max_bytes` (0: no such bound).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditQuery {
    pub since_unix_ms: Option<u64>,
    pub until_unix_ms: Option<u64>,
    /// "config/otel" matches that object; "config" matches every "config/...".
    pub object: Option<String>,
    pub limit: usize,
    pub max_bytes: usize,
}

/// Audit entries, newest first; `truncated` when `max_bytes` cut them short of `limit`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    pub truncated: bool,
    /// JSON bytes of the entries so far.
    bytes: usize,
}

impl AuditPage {
    /// Adds `entry` (of `bytes` JSON bytes) if `q` matches it; false once the page is full.
    pub(crate) fn offer(&mut self, q: &AuditQuery, entry: AuditEntry, bytes: usize) -> bool {
        if !q.matches(&entry) {
            return true;
        }
        self.entries.push(entry);
        self.bytes += bytes;
        if q.max_bytes > 0 && self.bytes >= q.max_bytes && self.entries.len() < q.limit {
            self.truncated = true;
            return false;
        }
        self.entries.len() < q.limit
    }
}

impl AuditQuery {
    pub fn matches(&self, e: &AuditEntry) -> bool {
        self.since_unix_ms.is_none_or(|s| e.at_unix_ms >= s)
            && self.until_unix_ms.is_none_or(|u| e.at_unix_ms <= u)
            && self.object.as_deref().is_none_or(|o| {
                e.object == o
                    || (e.object.starts_with(o) && e.object.as_bytes().get(o.len()) == Some(&b'/'))
            })
    }
}

/// Builds a change's audit entry once the store knows what it stored (e.g. the version number a
/// new config got).
pub type AuditOf<'a> = &'a (dyn Fn(&StoredConfig) -> AuditEntry + Send + Sync);

/// What [`Store::claim_due`] found in a shard.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Claimed {
    /// The agents whose deadline had passed (claimed now).
    pub due: Vec<Uuid>,
    /// The shard's earliest deadline after the claim (the claimed ones' included); None when it
    /// has none.
    pub next_unix_ms: Option<u64>,
}

/// The Store. Every admin change takes its audit entry and writes both in one step, so a change is
/// never on record without its entry or the other way round, whatever the client or the process
/// does; such writes are durable when they return. Agents' own reports may be written behind.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get_agent(&self, uid: Uuid) -> Result<Option<AgentRecord>, StoreError>;
    /// Writes an agent record (keyed by its instance_uid, in shard `fence.shard`) and changes its
    /// silence deadline, in one step, if `fence` still holds. With `audit`, the entry is written
    /// in the same step and both are durable when this returns. A store that does not hold
    /// every record in memory ([`Store::holds_agents_in_memory`]) takes a record in an owner's
    /// copy's form too ([`stored_record`]); one that does is never given one (owners keep no
    /// copies then) and refuses it. The parts `kept` names are left as the store has them;
    /// true when the record's description and health are stored apart now, so that a later save
    /// of the same shard under the same fence may keep them (`kept` is only ever given after
    /// such a save). A store that keeps no parts apart writes the whole record.
    async fn save_agent_keeping(
        &self,
        fence: Fence,
        record: &AgentRecord,
        deadline: Deadline,
        audit: Option<&AuditEntry>,
        kept: KeptParts,
    ) -> Result<bool, StoreError>;
    /// [`Store::save_agent_keeping`] of the whole record.
    async fn save_agent(
        &self,
        fence: Fence,
        record: &AgentRecord,
        deadline: Deadline,
        audit: Option<&AuditEntry>,
    ) -> Result<(), StoreError> {
        self.save_agent_keeping(fence, record, deadline, audit, KeptParts::default())
            .await
            .map(drop)
    }
    /// Records that an agent was heard from and nothing else of its record changed: only its
    /// sequence number and last-seen time are written (and its deadline changed), if `fence`
    /// still holds; false if it has no record (the caller saves the whole record instead). What
    /// a heartbeat costs the store: a few bytes, not the record.
    async fn touch_agent(
        &self,
        fence: Fence,
        touch: Touch,
        deadline: Deadline,
    ) -> Result<bool, StoreError>;
    /// Whether this store keeps every agent record in the process's memory, so a shard owner
    /// gains nothing by keeping copies of its own.
    fn holds_agents_in_memory(&self) -> bool {
        false
    }
    /// Removes an agent record and its deadline (and writes `audit` with it), if `fence` still
    /// holds; false if there was no such agent.
    async fn delete_agent(
        &self,
        fence: Fence,
        uid: Uuid,
        audit: Option<&AuditEntry>,
    ) -> Result<bool, StoreError>;
    /// Calls `f` on every agent record of the shards `shards` accepts. Fleet-wide views (counts,
    /// filters, pushes) use this so they copy only what they keep, never the whole fleet. A
    /// record whose effective config the store keeps apart comes without it here
    /// (`effective_config_sha256` names it; [`Store::effective_config`] reads it).
    async fn visit_agents(
        &self,
        shards: ShardFilter<'_>,
        f: &mut (dyn for<'r> FnMut(&'r AgentRecord) + Send),
    ) -> Result<(), StoreError>;
    /// The effective config of SHA-256 `sha256` kept apart from the records reporting it; None if
    /// no record names it (or this store keeps none apart).
    async fn effective_config(
        &self,
        _sha256: &[u8],
    ) -> Result<Option<EffectiveConfig>, StoreError> {
        Ok(None)
    }
    /// The fleet's counts, kept as records are written ([`super::Tally`]); None while some
    /// shard holds records written before counts were kept (count it with
    /// [`Store::count_shard`]; meanwhile the caller counts by visiting).
    async fn agent_counts(&self) -> Result<Option<AgentCounts>, StoreError>;
    /// Counts the agents of `fence.shard` if they are not counted yet (records written before
    /// counts were kept); true if it counted them.
    async fn count_shard(&self, _fence: Fence) -> Result<bool, StoreError> {
        Ok(false)
    }
    /// Claims the agents of `fence.shard` whose deadline is at or before `now_unix_ms`: their
    /// deadlines move to `now + retry_ms`, so if the claimer dies before saving them, the next
    /// owner finds them due again. The claimer saves each one (marking it silent, or re-arming).
    /// The answer names the shard's earliest deadline after the claim, so that the owner need not
    /// ask again before it (the owner alone arms the shard's deadlines).
    async fn claim_due(
        &self,
        fence: Fence,
        now_unix_ms: u64,
        retry_ms: u64,
    ) -> Result<Claimed, StoreError>;

    /// Stores `config` as the next version of its name (the version field is assigned here),
    /// with the audit entry `audit` makes of the stored version; with `activate`, it becomes the
    /// active version unless a newer one already is.
    async fn put_config(
        &self,
        config: StoredConfig,
        activate: bool,
        audit: AuditOf<'_>,
    ) -> Result<StoredConfig, StoreError>;
    /// Stores `config` under its own version number, as another region made it: added, or put in
    /// place of the version of that number (the active one included); versions stored here later
    /// get numbers after it. With `audit` in the same write.
    async fn import_config(
        &self,
        config: StoredConfig,
        audit: Option<&AuditEntry>,
    ) -> Result<(), StoreError>;
    /// Makes an existing version the active one; None if there is no such version.
    async fn activate_config(
        &self,
        name: &str,
        version: u64,
    ) -> Result<Option<StoredConfig>, StoreError>;
    /// Makes no version of config `name` active (agents stop getting it; its versions stay), with
    /// `audit` in the same write; false if none was active.
    async fn deactivate_config(
        &self,
        name: &str,
        audit: Option<&AuditEntry>,
    ) -> Result<bool, StoreError>;
    /// The active version of every config (what agents get), sorted by name.
    async fn list_configs(&self) -> Result<Vec<StoredConfig>, StoreError>;
    /// Every version of one config, oldest first; empty if there is no such config.
    async fn config_versions(&self, name: &str) -> Result<Vec<StoredConfig>, StoreError>;

    /// Writes document `id` of `collection` (and `audit` with it) if its revision is still
    /// `expected_revision` (0: it does not exist yet); false if another write came first.
    async fn put_doc(
        &self,
        collection: &str,
        id: &str,
        expected_revision: u64,
        json: &str,
        audit: Option<&AuditEntry>,
    ) -> Result<bool, StoreError>;
    async fn get_doc(&self, collection: &str, id: &str) -> Result<Option<Doc>, StoreError>;
    async fn list_docs(&self, collection: &str) -> Result<Vec<Doc>, StoreError>;

    /// Appends to the audit log what is not a change of stored state (a command delivered at
    /// once); entries older than the store's audit retention are forgotten.
    async fn append_audit(&self, entry: AuditEntry) -> Result<AuditEntry, StoreError>;
    async fn query_audit(&self, query: &AuditQuery) -> Result<AuditPage, StoreError>;

    /// Whether the store can take writes now; Err says why not (for `/readyz`).
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
}

/// How long audit entries are kept unless configured otherwise.
pub const DEFAULT_AUDIT_RETENTION: std::time::Duration =
    std::time::Duration::from_secs(90 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::opamp::{
        AgentConfigFile, AgentConfigMap, AgentDescription, ComponentHealth, KeyValue,
    };

    fn record(effective_config_hash: Vec<u8>, earlier_sha256: Vec<u8>) -> AgentRecord {
        let file = AgentConfigFile {
            body: vec![b'x'; 4000].into(),
            content_type: "text/yaml".into(),
        };
        let health = (0..30)
            .map(|i| (format!("c{i}"), ComponentHealth::default()))
            .collect();
        AgentRecord {
            instance_uid: vec![7; 16],
            sequence_num: 300,
            labels: [("team".to_owned(), "a".to_owned())].into(),
            health: Some(Box::new(ComponentHealth {
                healthy: true,
                component_health_map: health,
                ..Default::default()
            })),
            effective_config: Some(Box::new(EffectiveConfig {
                config_map: Some(AgentConfigMap {
                    config_map: [(String::new(), file)].into(),
                }),
            })),
            effective_config_hash,
            effective_config_sha256: earlier_sha256,
            ..Default::default()
        }
    }

    /// The stored encoding reads back as the record without its config, naming the config by
    /// its hash, with the config's encoding beside it: a record with an OpAMP config hash, one
    /// without (named by a digest), one that named another config before. A small config stays
    /// in the record, naming nothing.
    #[test]
    fn a_record_apart_is_the_record_without_its_config_naming_it() {
        for rec in [
            record(vec![1; 32], Vec::new()),
            record(Vec::new(), Vec::new()),
            record(vec![2; 32], vec![3; 32]),
        ] {
            let stored = stored_record(&rec).unwrap();
            let apart = stored
                .apart_sha256
                .clone()
                .expect("large enough to keep apart");
            let config = rec.effective_config.clone().unwrap();
            assert_eq!(stored.apart_body(), config.encode_to_vec());
            let sha = if rec.effective_config_hash.len() == 32 {
                rec.effective_config_hash.clone()
            } else {
                Sha256::digest(stored.apart_body()).to_vec()
            };
            assert_eq!(apart, sha);
            let mut want = rec.clone();
            want.effective_config = None;
            want.effective_config_sha256 = sha;
            assert_eq!(
                AgentRecord::decode(stored.joined().as_slice()).unwrap(),
                want
            );
        }
        let mut small = record(Vec::new(), vec![3; 32]);
        small.effective_config = Some(Box::new(EffectiveConfig::default()));
        let stored = stored_record(&small).unwrap();
        assert!(stored.apart_sha256.is_none(), "kept in the record");
        assert!(stored.apart_body().is_empty());
        let mut want = small.clone();
        want.effective_config_sha256.clear();
        assert_eq!(
            AgentRecord::decode(stored.joined().as_slice()).unwrap(),
            want
        );
    }

    /// A record in an owner's copy's form (description and components below the health's root
    /// encoded) is stored as the record it stands for; a record with a description and health
    /// of its own, as it is; its description and health are fields of their own, which the
    /// rest of the record lacks.
    #[test]
    fn a_copy_is_stored_as_the_record_it_stands_for() {
        let leaf = |status: &str| ComponentHealth {
            healthy: true,
            status: status.into(),
            ..Default::default()
        };
        let mut full = record(Vec::new(), Vec::new());
        full.description = Some(Box::new(AgentDescription {
            identifying_attributes: vec![KeyValue {
                key: "service.name".into(),
                value: None,
            }],
            ..Default::default()
        }));
        full.health = Some(Box::new(ComponentHealth {
            healthy: true,
            last_error: "none".into(),
            component_health_map: [("a".into(), leaf("ok")), ("b".into(), leaf("ok"))].into(),
            ..Default::default()
        }));
        let mut copy = full.clone();
        copy.copied_description = copy.description.take().unwrap().encode_to_vec();
        let health = copy.health.as_mut().unwrap();
        copy.copied_components = ComponentHealth {
            component_health_map: std::mem::take(&mut health.component_health_map),
            ..Default::default()
        }
        .encode_to_vec();
        let stored = stored_record(&full).unwrap();
        for rec in [&full, &copy] {
            let again = stored_record(rec).unwrap();
            let read = AgentRecord::decode(again.joined().as_slice()).unwrap();
            assert_eq!(
                read,
                AgentRecord::decode(stored.joined().as_slice()).unwrap()
            );
            assert_eq!(read.description, full.description);
            assert_eq!(read.health, full.health);
            assert!(read.copied_description.is_empty() && read.copied_components.is_empty());
            let rest = AgentRecord::decode(again.record.as_slice()).unwrap();
            assert!(rest.description.is_none() && rest.health.is_none());
            let parts = [again.description.as_slice(), &again.health].concat();
            let parts = AgentRecord::decode(parts.as_slice()).unwrap();
            assert_eq!(
                (parts.description, parts.health),
                (full.description.clone(), full.health.clone())
            );
        }
        // Components the root still names give way to the copy's (never both in a copy).
        let mut both = copy.clone();
        both.health.as_mut().unwrap().component_health_map = [("c".into(), leaf("x"))].into();
        let read = AgentRecord::decode(stored_record(&both).unwrap().joined().as_slice()).unwrap();
        assert_eq!(read.health, full.health);
    }
}
