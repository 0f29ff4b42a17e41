//! Configs as global objects in a fleet of several regions: every region stores every version of
//! every config, and which version is active, and converges to what the others hold.
//!
//! - A version is immutable and named by its number. Each region takes the versions it lacks from
//!   the others; when two regions made different versions of one number (they were cut off from
//!   each other), both keep the one made later (then the larger hash): the version numbers are the
//!   order, and every region ends with the same content under each number. A version made later
//!   here gets the next number past every version it has seen.
//! - Which version is active (or none, after a delete) is stamped with when and where an operator
//!   last changed it ([`Activation`], a document per config): the latest stamp wins everywhere.
//!   A rollout's activation is its own region's (each region runs its part of a rollout).
//!
//! The holder of shard 0 of each region asks the other regions every couple of seconds for their
//! digest ([`ConfigDigest`]) and takes what it lacks, so a region that was cut off catches up when
//! it can reach the others again; a region that cannot be reached is tried again next time.

use super::audit;
use super::regions::{
    Activation, ConfigDigest, RegionAnswer, RegionQuery, UNEXPECTED, VersionDigest,
};
use super::{Error, Ops, Result};
use flotilla_common::store::StoredConfig;
use flotilla_common::telemetry::now_unix_ms;
use std::collections::BTreeMap;
use tracing::info;

/// The documents holding each config's [`Activation`], by config name.
pub const ACTIVATIONS: &str = "config-activations";

/// A config's activation from its document.
fn parse_activation(json: &str, name: &str) -> Result<Activation> {
    serde_json::from_str(json).map_err(|e| {
        Error::Store(flotilla_common::store::StoreError::Corrupt(format!(
            "activation of config {name:?}: {e}"
        )))
    })
}

impl Activation {
    /// Whether this stamp is later than `other` (time, then region name: the same everywhere).
    fn after(&self, other: &Activation) -> bool {
        (self.at_unix_ms, &self.region) > (other.at_unix_ms, &other.region)
    }
}

impl VersionDigest {
    fn of(c: &StoredConfig) -> Self {
        Self {
            version: c.version,
            hash: c.hash.clone(),
            created_unix_ms: c.created_unix_ms,
        }
    }

    /// Whether this version wins over `other` of the same number: made later, then the larger
    /// hash.
    fn wins_over(&self, other: &VersionDigest) -> bool {
        (self.created_unix_ms, &self.hash) > (other.created_unix_ms, &other.hash)
    }
}

/// What one pass took from the other regions.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Synced {
    pub versions: usize,
    pub activations: usize,
    /// Regions that could not be asked this time.
    pub missing: Vec<String>,
}

impl Ops {
    /// Stamps config `name`'s activation as it stands now when an operator `changed` it here;
    /// else (a version only staged) notes the name with no stamp, unless it has one.
    pub(crate) async fn note_activation(&self, name: &str, changed: bool) -> Result<()> {
        if self.peer_regions().is_empty() {
            return Ok(());
        }
        if !changed {
            return match self.activation(name).await? {
                (0, _) => self.write_activation(name, &Activation::default()).await,
                _ => Ok(()),
            };
        }
        let active = self
            .store()
            .list_configs()
            .await?
            .into_iter()
            .find(|c| c.name == name)
            .map_or(0, |c| c.version);
        let stamp = Activation {
            active,
            at_unix_ms: now_unix_ms(),
            region: self.region().to_owned(),
        };
        self.write_activation(name, &stamp).await
    }

    /// [`Ops::note_activation`] after a change that is stored and audited already: a failure is
    /// logged (the change stands here; the other regions take it with its next stamp).
    pub(crate) async fn noted_activation(&self, name: &str, changed: bool) {
        if let Err(e) = self.note_activation(name, changed).await {
            tracing::warn!(config = %name, error = %e, "config activation not stamped for the other regions");
        }
    }

    async fn activation(&self, name: &str) -> Result<(u64, Activation)> {
        Ok(match self.store().get_doc(ACTIVATIONS, name).await? {
            Some(doc) => (doc.revision, parse_activation(&doc.json, name)?),
            None => (0, Activation::default()),
        })
    }

    /// Writes `stamp` unless a later one is stored (compare-and-set, retried on a race).
    async fn write_activation(&self, name: &str, stamp: &Activation) -> Result<()> {
        let json = serde_json::to_string(stamp).unwrap_or_default();
        for _ in 0..5 {
            let (revision, stored) = self.activation(name).await?;
            if revision > 0 && !stamp.after(&stored) {
                return Ok(());
            }
            if self
                .store()
                .put_doc(ACTIVATIONS, name, revision, &json, None)
                .await?
            {
                return Ok(());
            }
        }
        Err(Error::Unavailable(format!(
            "the activation of config {name:?} kept changing under this write"
        )))
    }

    /// What this region holds of every config (names with a version or an activation).
    pub(crate) async fn config_digest(&self) -> Result<Vec<ConfigDigest>> {
        let mut digests: BTreeMap<String, ConfigDigest> = BTreeMap::new();
        for doc in self.store().list_docs(ACTIVATIONS).await? {
            let activation = parse_activation(&doc.json, &doc.id)?;
            digests.insert(
                doc.id.clone(),
                ConfigDigest {
                    name: doc.id,
                    activation,
                    versions: Vec::new(),
                },
            );
        }
        for c in self.store().list_configs().await? {
            digests
                .entry(c.name.clone())
                .or_insert_with(|| ConfigDigest {
                    name: c.name.clone(),
                    ..Default::default()
                });
        }
        for (name, d) in &mut digests {
            d.versions = self
                .store()
                .config_versions(name)
                .await?
                .iter()
                .map(VersionDigest::of)
                .collect();
        }
        Ok(digests.into_values().collect())
    }

    /// One version of a config as stored here.
    pub(crate) async fn config_version(&self, name: &str, version: u64) -> Result<StoredConfig> {
        self.store()
            .config_versions(name)
            .await?
            .into_iter()
            .find(|c| c.version == version)
            .ok_or_else(|| Error::NotFound(format!("no version {version} of config {name:?}")))
    }

    /// Takes from every other region the config versions and activations this one lacks, and
    /// makes the shard owners push what changed.
    pub async fn sync_configs(&self) -> Result<Synced> {
        let mut synced = Synced::default();
        if self.peer_regions().is_empty() {
            return Ok(synced);
        }
        let asked = self
            .ask_regions(&RegionQuery::ConfigDigest, |a| match a {
                RegionAnswer::ConfigDigest(d) => Ok(d),
                _ => Err(UNEXPECTED.into()),
            })
            .await;
        synced.missing = asked.missing;
        for (region, theirs) in asked.answers {
            let ours: BTreeMap<String, ConfigDigest> = self
                .config_digest()
                .await?
                .into_iter()
                .map(|d| (d.name.clone(), d))
                .collect();
            for digest in theirs {
                let mine = ours.get(&digest.name).cloned().unwrap_or_default();
                self.take_config(&region, &digest, &mine, &mut synced)
                    .await?;
            }
        }
        if synced.versions + synced.activations > 0 {
            info!(
                versions = synced.versions,
                activations = synced.activations,
                "configs taken from other regions"
            );
            self.announce_change("configs from other regions").await;
        }
        Ok(synced)
    }

    /// Takes what `region` holds of one config (`theirs`) that this region lacks (`mine`).
    async fn take_config(
        &self,
        region: &str,
        theirs: &ConfigDigest,
        mine: &ConfigDigest,
        synced: &mut Synced,
    ) -> Result<()> {
        let name = &theirs.name;
        for v in &theirs.versions {
            let here = mine.versions.iter().find(|m| m.version == v.version);
            if here.is_some_and(|h| h == v || !v.wins_over(h)) {
                continue;
            }
            let config = self.remote_version(region, name, v.version).await?;
            let entry = audit::entry(
                super::caller::SYSTEM,
                "config.replicate",
                format!("config/{name}"),
                None,
                serde_json::to_value(serde_json::json!({
                    "version": config.version,
                    "hash": config.hash,
                    "from_region": region,
                    "replaced": here.map(|h| h.hash.clone()),
                }))
                .ok(),
            );
            self.store().import_config(config, Some(&entry)).await?;
            synced.versions += 1;
        }
        let stamp = &theirs.activation;
        if stamp.at_unix_ms > 0 && stamp.after(&mine.activation) {
            let applied = if stamp.active == 0 {
                self.store().deactivate_config(name, None).await?;
                true
            } else {
                self.store()
                    .activate_config(name, stamp.active)
                    .await?
                    .is_some()
            };
            // A version not here yet (its copy failed): the stamp waits for the next pass.
            if applied {
                self.write_activation(name, stamp).await?;
                synced.activations += 1;
            }
        }
        Ok(())
    }

    async fn remote_version(&self, region: &str, name: &str, version: u64) -> Result<StoredConfig> {
        let query = RegionQuery::ConfigVersion {
            name: name.to_owned(),
            version,
        };
        let answer = self
            .ask_region(region, &query)
            .await
            .map_err(|why| Error::Unavailable(format!("region {region}: {why}")))?;
        match answer {
            RegionAnswer::ConfigVersion(c) if c.name == name && c.version == version => Ok(*c),
            _ => Err(Error::Unavailable(format!(
                "region {region} sent another answer than version {version} of config {name:?}"
            ))),
        }
    }
}
