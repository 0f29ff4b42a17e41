//! The records of one owned shard, locked ([`Locked`]): every read and write of an agent's record
//! by its owner goes through here, under the shard's lock and fence. With a remote store the owner
//! keeps a copy of each record it read or wrote ([`super::shards::ShardCache`]): a message is
//! processed without reading the store, and a save that changes only the sequence number and
//! last-seen time (a heartbeat) writes just those ([`Store::touch_agent`]), still fenced. The
//! owner's first walk over a shard's agents ([`Owner::visit_owned`]) copies all of them; its
//! walks after that (alerts, gauges, retention, pushes) read the copies, not the store.

use super::owner::Owner;
use super::shards::{RecordCopy, ShardCache, ShardGuard, ShardTable, Walk};
use crate::fleet::agents::{encoded_components, encoded_description};
use flotilla_common::store::{AuditEntry, Deadline, Fence, KeptParts, Store, StoreError, Touch};
use flotilla_proto::bus::AgentRecord;
use flotilla_proto::opamp::EffectiveConfig;
use futures_util::TryStreamExt;
use tracing::{Span, info};
use uuid::Uuid;

/// Shards whose records a walk over an owner's agents reads from the store at once, waiting for
/// their locks ([`Owner::visit_shards`]).
const WALK_SHARDS_AT_ONCE: usize = 256;
/// Shards a walk reads from the copies between two yields to the runtime's other tasks.
const COPIES_BETWEEN_YIELDS: usize = 32;

/// One owned shard under its lock, with the fence its writes carry.
pub(crate) struct Locked<'a> {
    held: ShardGuard<'a>,
    shards: &'a ShardTable,
    pub(crate) fence: Fence,
    store: &'a dyn Store,
    /// Whether copies are kept (not when the store itself holds every record in memory).
    keep: bool,
}

impl Owner {
    /// Takes the lock of `shard`; None if this process may not act on it.
    pub(crate) async fn lock_owned(&self, shard: u16) -> Option<Locked<'_>> {
        let held = self.shards.lock(shard).await;
        let fence = self.shards.fence(shard)?;
        Span::current()
            .record("shard", shard)
            .record("epoch", fence.epoch);
        Some(Locked {
            held,
            shards: &self.shards,
            fence,
            store: self.store.as_ref(),
            keep: !self.store.holds_agents_in_memory(),
        })
    }

    /// Saves under the shard's fence (with `audit` in the same step); false (and the shard
    /// dropped) if another coordinator took it.
    pub(crate) async fn save_or_drop(
        &self,
        shard: &mut Locked<'_>,
        rec: &mut AgentRecord,
        deadline: Deadline,
        audit: Option<&AuditEntry>,
    ) -> Result<bool, StoreError> {
        let saved = shard.save(rec, deadline, audit).await;
        Ok(self.unless_fenced(shard, saved)?.is_some())
    }

    /// [`Owner::save_or_drop`] of a record the caller needs no more ([`Locked::save_owned`]).
    pub(crate) async fn save_owned_or_drop(
        &self,
        shard: &mut Locked<'_>,
        rec: AgentRecord,
        deadline: Deadline,
        audit: Option<&AuditEntry>,
    ) -> Result<bool, StoreError> {
        let saved = shard.save_owned(rec, deadline, audit).await;
        Ok(self.unless_fenced(shard, saved)?.is_some())
    }

    /// A write's outcome: None (and the shard dropped) if another coordinator took the shard.
    fn unless_fenced<T>(
        &self,
        shard: &mut Locked<'_>,
        written: Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        match written {
            Ok(t) => Ok(Some(t)),
            Err(StoreError::Fenced { .. }) => {
                self.lost(shard);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Removes an agent (with `audit`): whether there was one; None (and the shard dropped) if
    /// another coordinator took the shard.
    pub(crate) async fn delete_or_drop(
        &self,
        shard: &mut Locked<'_>,
        uid: Uuid,
        audit: Option<&AuditEntry>,
    ) -> Result<Option<bool>, StoreError> {
        let deleted = shard.delete(uid, audit).await;
        self.unless_fenced(shard, deleted)
    }

    /// Has the store count the agents of owned shards it does not count yet (records written
    /// before counts were kept); each shard is asked once per epoch.
    pub(crate) async fn count_shards(&self) -> Result<(), StoreError> {
        let uncounted: Vec<u16> = self
            .shards
            .owned()
            .into_iter()
            .filter(|s| {
                self.shards
                    .fence(*s)
                    .is_some_and(|f| !self.shards.counted(f))
            })
            .collect();
        for shard in uncounted {
            let Some(mut locked) = self.lock_owned(shard).await else {
                continue;
            };
            match locked.store.count_shard(locked.fence).await {
                Ok(counted) => {
                    if counted {
                        info!(shard, "agents written before counts were kept are counted");
                    }
                    self.shards.mark_counted(locked.fence);
                }
                Err(StoreError::Fenced { .. }) => self.lost(&mut locked),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// A write was refused: another coordinator holds the shard now.
    fn lost(&self, shard: &mut Locked<'_>) {
        shard.cache().clear();
        self.fenced(shard.fence.shard);
    }
}

impl Locked<'_> {
    /// The shard's copies, for a moment (never across an await: walks read them meanwhile).
    fn cache(&self) -> parking_lot::MutexGuard<'_, ShardCache> {
        self.held.cache()
    }

    /// Agent `uid`'s record, decoded whole: the owner's copy, or the store's.
    pub(crate) async fn get(&mut self, uid: Uuid) -> Result<Option<AgentRecord>, StoreError> {
        self.read(uid, RecordCopy::whole).await
    }

    /// Agent `uid`'s record for processing its message (or a change of its status): the
    /// owner's copy in its form ([`RecordCopy::for_message`]), or the store's (decoded), saved
    /// as it is (the store writes the copy's form as the record it stands for). Whatever sets
    /// its description or health clears the encoded one ([`crate::fleet::agents::copy_form`]).
    pub(crate) async fn get_for_message(
        &mut self,
        uid: Uuid,
    ) -> Result<Option<AgentRecord>, StoreError> {
        self.read(uid, |copy| Some(copy.for_message())).await
    }

    /// Agent `uid`'s record: `from_copy` of the owner's copy, else the store's.
    async fn read(
        &mut self,
        uid: Uuid,
        from_copy: impl Fn(&RecordCopy) -> Option<AgentRecord>,
    ) -> Result<Option<AgentRecord>, StoreError> {
        {
            let cache = self.cache();
            if let Some(rec) = cache.get(&uid).and_then(&from_copy) {
                return Ok(Some(rec));
            }
            if cache.is_whole() && cache.get(&uid).is_none() {
                // The copies are every record of the shard: there is no such agent.
                return Ok(None);
            }
        }
        let mut rec = self.store.get_agent(uid).await?;
        if self.keep
            && let Some(rec) = &mut rec
        {
            self.keep_copy_of(rec, false);
        }
        Ok(rec)
    }

    /// Keeps `rec` (without its effective config) as the copy of agent `uid`'s record, with
    /// `config` shared with the copy it replaces or any other copy that has the same;
    /// `parts_apart` as [`RecordCopy::parts_apart`].
    fn keep(
        &self,
        rec: AgentRecord,
        config: Option<&EffectiveConfig>,
        uid: Uuid,
        parts_apart: bool,
    ) {
        let mut cache = self.cache();
        let effective =
            config.map(
                |config| match cache.get(&uid).and_then(|b| b.effective.as_ref()) {
                    Some(kept) if **kept == *config => kept.clone(),
                    _ => self
                        .shards
                        .shared_configs()
                        .share(&rec.effective_config_hash, config),
                },
            );
        let mut copy = RecordCopy::new(rec, effective);
        copy.parts_apart = parts_apart;
        cache.keep(uid, Box::new(copy));
    }

    /// Keeps `rec` itself as its copy ([`Locked::keep`]).
    fn keep_owned(&self, mut rec: AgentRecord, parts_apart: bool) {
        if let Ok(uid) = Uuid::from_slice(&rec.instance_uid) {
            let config = rec.effective_config.take();
            self.keep(rec, config.as_deref(), uid, parts_apart);
        }
    }

    /// Keeps a copy of `rec` ([`Locked::keep`]): `rec` is as it was when this returns (its
    /// effective config taken out while the rest is copied, so that it is not copied too).
    fn keep_copy_of(&self, rec: &mut AgentRecord, parts_apart: bool) {
        if let Ok(uid) = Uuid::from_slice(&rec.instance_uid) {
            let config = rec.effective_config.take();
            self.keep(rec.clone(), config.as_deref(), uid, parts_apart);
            rec.effective_config = config;
        }
    }

    /// Writes `rec` and changes its deadline (with `audit` in the same step): only its sequence
    /// number and last-seen time when nothing else differs from the copy, else all of it. `rec`
    /// is borrowed mutably to compare it without copying its effective config; it is as it was
    /// when this returns.
    pub(crate) async fn save(
        &mut self,
        rec: &mut AgentRecord,
        deadline: Deadline,
        audit: Option<&AuditEntry>,
    ) -> Result<(), StoreError> {
        if let Some(parts_apart) = self.write(rec, deadline, audit).await? {
            self.keep_copy_of(rec, parts_apart);
        }
        Ok(())
    }

    /// [`Locked::save`] of a record the caller needs no more: it becomes the copy as it is,
    /// rather than a copy of it (a collector's record has dozens of health components: copying
    /// it is an allocation for each).
    pub(crate) async fn save_owned(
        &mut self,
        mut rec: AgentRecord,
        deadline: Deadline,
        audit: Option<&AuditEntry>,
    ) -> Result<(), StoreError> {
        if let Some(parts_apart) = self.write(&mut rec, deadline, audit).await? {
            self.keep_owned(rec, parts_apart);
        }
        Ok(())
    }

    /// The store's side of [`Locked::save`]: a touch when only the sequence number and
    /// last-seen time differ from the copy (the copy touched too), else the whole record, but
    /// for the description and health the store holds as they are (apart, as the copy says).
    /// Some when the whole record was written and its copy is to be kept (copies are kept):
    /// whether the store holds its parts apart now. On an error the copy goes.
    async fn write(
        &mut self,
        rec: &mut AgentRecord,
        deadline: Deadline,
        audit: Option<&AuditEntry>,
    ) -> Result<Option<bool>, StoreError> {
        let touch = Touch::of(rec)
            .ok_or_else(|| StoreError::Corrupt("agent record without a 16-byte uid".into()))?;
        let heard_only = audit.is_none()
            && self
                .cache()
                .get_mut(&touch.uid)
                .is_some_and(|copy| heard_only(copy, rec));
        if heard_only {
            let touched = self.store.touch_agent(self.fence, touch, deadline).await;
            match touched {
                Ok(true) => {
                    self.cache().touch(&touch);
                    self.note_deadline(deadline, true);
                    return Ok(None);
                }
                // Gone from the store: written whole below.
                Ok(false) => {}
                Err(e) => {
                    self.cache().forget(&touch.uid);
                    self.note_deadline(deadline, false);
                    return Err(e);
                }
            }
        }
        // A record of the copy's form (from a message) is stored as it is: the store writes its
        // encoded parts as what they stand for, and it stays the copy's form for the copy.
        let kept = self
            .cache()
            .get(&touch.uid)
            .map_or_else(KeptParts::default, |copy| kept_parts(copy, rec));
        let saved = self
            .store
            .save_agent_keeping(self.fence, rec, deadline, audit, kept)
            .await;
        self.note_deadline(deadline, saved.is_ok());
        match saved {
            Ok(parts_apart) => Ok(self.keep.then_some(parts_apart)),
            Err(e) => {
                // Written or not: the store's copy is the one to read next.
                self.cache().forget(&touch.uid);
                Err(e)
            }
        }
    }

    /// Tells the shard table of a deadline a write armed (`written`), or may have armed (the
    /// write failed: the shard's earliest deadline is not known then), for the silence sweep.
    fn note_deadline(&self, deadline: Deadline, written: bool) {
        if let Deadline::Arm(at) = deadline {
            if written {
                self.shards.armed(self.fence, at);
            } else {
                self.shards.due_unknown(self.fence.shard);
            }
        }
    }

    /// Removes agent `uid` (with `audit` in the same step); false if there was no such agent.
    pub(crate) async fn delete(
        &mut self,
        uid: Uuid,
        audit: Option<&AuditEntry>,
    ) -> Result<bool, StoreError> {
        let deleted = self.store.delete_agent(self.fence, uid, audit).await;
        match deleted {
            Ok(_) => {
                self.cache().remove(&uid);
            }
            Err(_) => self.cache().forget(&uid),
        }
        deleted
    }

    /// Calls `f` with every record of the shard (without its effective config when the store
    /// keeps that apart): from the copies once they are the whole shard, else from the store,
    /// whose records become the copies (so the next walk reads no store). A record whose
    /// effective config the store does not hold is visited as read and not copied.
    pub(crate) async fn visit(
        &mut self,
        f: &mut (dyn FnMut(&AgentRecord) + Send),
    ) -> Result<(), StoreError> {
        {
            let cache = self.cache();
            if cache.is_whole() {
                cache.copies().for_each(f);
                return Ok(());
            }
        }
        let shard = self.fence.shard;
        let mut read: Vec<AgentRecord> = Vec::new();
        self.store
            .visit_agents(&|s| s == shard, &mut |rec| read.push(rec.clone()))
            .await?;
        let mut whole = self.keep;
        for mut rec in read {
            f(&rec);
            let Ok(uid) = Uuid::from_slice(&rec.instance_uid) else {
                whole = false;
                continue;
            };
            if !self.keep || self.cache().get(&uid).is_some() {
                continue;
            }
            if rec.effective_config.is_none() && !rec.effective_config_sha256.is_empty() {
                rec.effective_config = self
                    .store
                    .effective_config(&rec.effective_config_sha256)
                    .await?
                    .map(Box::new);
                if rec.effective_config.is_none() {
                    whole = false;
                    continue;
                }
            }
            self.keep_owned(rec, false);
        }
        self.cache().set_whole(whole);
        Ok(())
    }
}

impl Owner {
    /// Calls `f` with every record of the owned shards `shards` selects, each shard under its
    /// lock ([`Owner::visit_shards`], [`Locked::visit`]): the owner's copies where they are
    /// whole, else the store. With a store that holds every record in memory, that store's own walk. Fails if a
    /// shard owned when the walk began is lost before its turn: a walk that left its agents out
    /// would tell the alerts pass their conditions had ended.
    pub(crate) async fn visit_owned(
        &self,
        shards: &(dyn Fn(u16) -> bool + Sync),
        mut f: &mut (dyn FnMut(&AgentRecord) + Send),
    ) -> Result<(), StoreError> {
        if self.store.holds_agents_in_memory() {
            let mine = |s| shards(s) && self.shards.fence(s).is_some();
            return self.store.visit_agents(&mine, f).await;
        }
        let owned: Vec<u16> = self
            .shards
            .owned()
            .into_iter()
            .filter(|s| shards(*s))
            .collect();
        if self.visit_shards(&owned, &mut f).await?.len() < owned.len() {
            return Err(StoreError::Io(
                "a shard was given up during a walk over its agents".into(),
            ));
        }
        Ok(())
    }

    /// Calls `f` with every record of the shards of `list` that are still owned when their turn
    /// comes: returns those shards. A shard whose copies are whole is read from them without
    /// waiting for its lock ([`super::shards::ShardTable::read_whole`]): a message holds the lock
    /// while it writes the store (tens of milliseconds on average during a push at 100,000
    /// agents: docs/benchmarks.md), and a walk that waited for every shard's would wait for the
    /// slowest of them. The others are read under their locks, up to [`WALK_SHARDS_AT_ONCE`] at
    /// once; `f` is called for one record at a time.
    ///
    /// A list's walk takes, of whole copies that changed by touches alone since the last walk
    /// of the same listing, those it listed then ([`super::shards::ShardTable::read_whole`]).
    pub(crate) async fn visit_shards(
        &self,
        list: &[u16],
        walk: &mut dyn Walk,
    ) -> Result<Vec<u16>, StoreError> {
        let mut visited = Vec::with_capacity(list.len());
        let mut locked = Vec::new();
        for (i, &shard) in list.iter().enumerate() {
            if self.shards.read_whole(shard, walk) {
                visited.push(shard);
            } else {
                locked.push(shard);
            }
            if i % COPIES_BETWEEN_YIELDS == COPIES_BETWEEN_YIELDS - 1 {
                tokio::task::yield_now().await;
            }
        }
        let walk = parking_lot::Mutex::new(walk);
        let visited = parking_lot::Mutex::new(visited);
        futures_util::stream::iter(locked.iter().map(Ok))
            .try_for_each_concurrent(WALK_SHARDS_AT_ONCE, |&shard| {
                let (walk, visited) = (&walk, &visited);
                async move {
                    let Some(mut locked) = self.lock_owned(shard).await else {
                        return Ok(());
                    };
                    locked
                        .visit(&mut |rec| {
                            walk.lock().take(rec);
                        })
                        .await?;
                    visited.lock().push(shard);
                    Ok(())
                }
            })
            .await?;
        Ok(visited.into_inner())
    }
}

/// The parts of `new` the store holds as they are: those of a copy whose parts the store holds
/// apart ([`RecordCopy::parts_apart`]) where `new` has them alike, in the same form (a part
/// decoded in one and encoded in the other is written again).
fn kept_parts(copy: &RecordCopy, new: &AgentRecord) -> KeptParts {
    let old = &copy.rec;
    KeptParts {
        description: copy.parts_apart
            && old.description == new.description
            && old.copied_description == new.copied_description,
        health: copy.parts_apart
            && old.health == new.health
            && old.copied_components == new.copied_components,
    }
}

/// Whether `new` differs from `copy` in its sequence number and last-seen time alone. `new` may
/// be in the copy's form ([`RecordCopy::for_message`]) or decoded, part by part: it is compared
/// in the copy's form, its decoded parts encoded for the comparison and its effective config
/// taken out; the copy's two fields set to `new`'s. All is put back after: neither record is
/// cloned.
fn heard_only(copy: &mut RecordCopy, new: &mut AgentRecord) -> bool {
    let config = new.effective_config.take();
    let description = new.description.take();
    let encoded_here = match encoded_description(description.as_deref()) {
        Some(encoded) => {
            new.copied_description = encoded;
            true
        }
        // None, or one without attributes: the copy has it as it is.
        None => {
            new.description.clone_from(&description);
            false
        }
    };
    let (encoded_tree, tree) = encoded_components(
        new.health
            .as_mut()
            .map(|h| std::mem::take(&mut h.component_health_map))
            .unwrap_or_default(),
    );
    let tree_encoded_here = encoded_tree.is_some();
    if let Some(encoded) = encoded_tree {
        new.copied_components = encoded;
    }
    let rec = &mut copy.rec;
    let kept = (rec.sequence_num, rec.last_seen_unix_ms);
    (rec.sequence_num, rec.last_seen_unix_ms) = (new.sequence_num, new.last_seen_unix_ms);
    let same = *rec == *new && copy.effective.as_deref() == config.as_deref();
    (rec.sequence_num, rec.last_seen_unix_ms) = kept;
    if encoded_here {
        new.copied_description = Vec::new();
    }
    new.description = description;
    if tree_encoded_here {
        new.copied_components = Vec::new();
    }
    if let Some(h) = new.health.as_mut() {
        h.component_health_map = tree;
    }
    new.effective_config = config;
    same
}

#[cfg(test)]
mod tests {
    use super::super::shards::SharedConfigs;
    use super::*;
    use flotilla_proto::opamp::{
        AgentConfigFile, AgentConfigMap, AgentDescription, AnyValue, ComponentHealth,
        EffectiveConfig, KeyValue, any_value,
    };
    use std::sync::Arc;

    fn config(body: &str) -> EffectiveConfig {
        EffectiveConfig {
            config_map: Some(AgentConfigMap {
                config_map: [(
                    String::new(),
                    AgentConfigFile {
                        body: body.to_owned().into_bytes().into(),
                        content_type: "text/yaml".into(),
                    },
                )]
                .into(),
            }),
        }
    }

    fn component(status: &str) -> ComponentHealth {
        ComponentHealth {
            healthy: true,
            status: status.into(),
            ..Default::default()
        }
    }

    fn description(env: &str) -> AgentDescription {
        let kv = |k: &str, v: &str| KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
        };
        AgentDescription {
            identifying_attributes: vec![kv("service.name", "otelcol")],
            non_identifying_attributes: vec![kv("deployment.environment", env)],
        }
    }

    /// A health tree of pipelines, each with a receiver and an exporter.
    fn tree() -> ComponentHealth {
        let pipeline = || ComponentHealth {
            component_health_map: [
                ("receiver:otlp".into(), component("StatusOK")),
                ("exporter:otlp".into(), component("StatusOK")),
            ]
            .into(),
            ..component("StatusOK")
        };
        ComponentHealth {
            component_health_map: [
                ("pipeline:traces".into(), pipeline()),
                ("pipeline:logs".into(), pipeline()),
            ]
            .into(),
            ..component("StatusOK")
        }
    }

    #[test]
    fn only_the_sequence_number_and_last_seen_time_make_a_touch() {
        let mut copy = RecordCopy::new(
            AgentRecord {
                instance_uid: vec![7; 16],
                sequence_num: 4,
                last_seen_unix_ms: 1_000,
                health: Some(Box::new(tree())),
                description: Some(Box::new(description("prod"))),
                ..Default::default()
            },
            Some(Arc::new(config("a: 1"))),
        );
        assert!(
            copy.rec.description.is_none() && !copy.rec.copied_description.is_empty(),
            "the copy keeps the description encoded"
        );
        assert!(
            copy.rec
                .health
                .as_ref()
                .unwrap()
                .component_health_map
                .is_empty(),
            "the copy keeps the tree encoded"
        );
        let mut new = copy.whole().unwrap();
        assert_eq!(
            new.health,
            Some(Box::new(tree())),
            "and gives it back whole"
        );
        assert_eq!(new.description, Some(Box::new(description("prod"))));
        assert!(new.copied_description.is_empty());
        new.sequence_num = 5;
        new.last_seen_unix_ms = 31_000;
        assert!(heard_only(&mut copy, &mut new));
        assert_eq!(
            (copy.rec.sequence_num, copy.rec.last_seen_unix_ms),
            (4, 1_000),
            "the copy is left as it was"
        );
        assert_eq!(
            new.effective_config,
            Some(Box::new(config("a: 1"))),
            "and the record"
        );
        assert_eq!(new.health, Some(Box::new(tree())));
        assert_eq!(new.description, Some(Box::new(description("prod"))));
        assert!(new.copied_description.is_empty());
        new.description = Some(Box::new(description("dev")));
        assert!(!heard_only(&mut copy, &mut new), "another attribute value");
        assert_eq!(new.description, Some(Box::new(description("dev"))));
        new.description = Some(Box::new(AgentDescription::default()));
        assert!(!heard_only(&mut copy, &mut new), "no attributes");
        new.description = Some(Box::new(description("prod")));
        new.effective_config = Some(Box::new(config("a: 2")));
        assert!(!heard_only(&mut copy, &mut new), "a new effective config");
        new.effective_config = Some(Box::new(config("a: 1")));
        let health = new.health.as_mut().unwrap();
        let deep = health
            .component_health_map
            .get_mut("pipeline:logs")
            .unwrap();
        deep.component_health_map
            .get_mut("exporter:otlp")
            .unwrap()
            .status = "StatusRecoverableError".into();
        assert!(
            !heard_only(&mut copy, &mut new),
            "a component deep in the tree"
        );
        new.health = Some(Box::new(tree()));
        new.health.as_mut().unwrap().component_health_map.clear();
        assert!(!heard_only(&mut copy, &mut new), "no components");
        new.health = None;
        assert!(!heard_only(&mut copy, &mut new), "no health");
        new.health = Some(Box::new(tree()));
        assert!(heard_only(&mut copy, &mut new), "the same again");
        new.status = 2;
        assert!(!heard_only(&mut copy, &mut new));
        assert_eq!((copy.rec.sequence_num, copy.rec.status), (4, 0));

        // A message's record is in the copy's form: compared as it is, and left so.
        let mut new = copy.for_message();
        assert!(new.description.is_none() && !new.copied_components.is_empty());
        new.sequence_num = 6;
        assert!(heard_only(&mut copy, &mut new), "a heartbeat");
        let mut expected = copy.for_message();
        expected.sequence_num = 6;
        assert_eq!(new, expected, "left as it was");
        // What a message reports replaces the encoded part (opamp/process.rs, merge).
        new.copied_description = Vec::new();
        new.description = Some(Box::new(description("dev")));
        assert!(!heard_only(&mut copy, &mut new), "a new description");
        new.description = Some(Box::new(description("prod")));
        assert!(
            heard_only(&mut copy, &mut new),
            "the same description, decoded"
        );
        new.copied_components = Vec::new();
        new.health = Some(Box::new(tree()));
        assert!(heard_only(&mut copy, &mut new), "the same tree, decoded");
        new.health = Some(Box::new(component("StatusOK")));
        assert!(
            !heard_only(&mut copy, &mut new),
            "a tree without components"
        );
    }

    /// A save leaves to the store the parts it holds apart as the record has them: none of a
    /// copy it did not write so, and of one it did, those alike in the same form.
    #[test]
    fn a_save_keeps_the_parts_stored_apart_that_did_not_change() {
        let mut copy = RecordCopy::new(
            AgentRecord {
                instance_uid: vec![7; 16],
                health: Some(Box::new(tree())),
                description: Some(Box::new(description("prod"))),
                ..Default::default()
            },
            None,
        );
        let mut new = copy.for_message();
        new.sequence_num = 9;
        new.status = 2;
        assert_eq!(
            kept_parts(&copy, &new),
            KeptParts::default(),
            "read, not written apart"
        );
        copy.parts_apart = true;
        let both = KeptParts {
            description: true,
            health: true,
        };
        assert_eq!(kept_parts(&copy, &new), both);
        new.copied_components = Vec::new();
        new.health = Some(Box::new(tree()));
        assert_eq!(
            kept_parts(&copy, &new),
            KeptParts {
                health: false,
                ..both
            },
            "the same tree decoded is written again"
        );
        let mut new = copy.for_message();
        new.health.as_mut().unwrap().healthy = false;
        new.copied_description = Vec::new();
        new.description = Some(Box::new(description("dev")));
        assert_eq!(
            kept_parts(&copy, &new),
            KeptParts::default(),
            "both changed"
        );
    }

    #[test]
    fn copies_share_an_effective_config_they_have_in_common() {
        let shared = SharedConfigs::default();
        let (a, b) = (config("a: 1"), config("a: 1"));
        let first = shared.share(b"h1", &a);
        let second = shared.share(b"h1", &b);
        assert!(Arc::ptr_eq(&first, &second));
        let other = shared.share(b"h1", &config("a: 2"));
        assert!(
            !Arc::ptr_eq(&first, &other),
            "same hash, other body: not shared"
        );
        drop((first, second, other));
        let again = shared.share(b"h1", &a);
        assert_eq!(*again, a, "none held any more: a new one");
    }
}
