//! Named configs and how an agent's desired state is chosen from them.
//!
//! A config bundles up to three aspects: files (remote config), packages and connection settings.
//! For each aspect separately, an agent gets it from the matching config that defines it and has
//! the most specific selector (the most terms); among equally specific ones, the name that sorts
//! first wins. An empty selector matches every agent, so it serves as the fleet default. An agent
//! enrolled in an active rollout resolves as if the rollout's version of that config were active.
//! The hash sent to agents is SHA-256 over every file, in file-name order, each as
//! `len(name) name len(content_type) content_type len(body) body` (lengths as 8-byte big-endian):
//! the same files always give the same hash, on every node and every build.

use super::{components, drift};
use flotilla_common::selector::Attributes;
use flotilla_common::store::{ConfigFile, StoredConfig};
use flotilla_proto::bus::Drift;
use flotilla_proto::opamp::AgentConfigMap;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use uuid::Uuid;

/// One part of the desired state a config may define.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aspect {
    Files,
    Packages,
    Settings,
}

impl Aspect {
    pub const ALL: [Aspect; 3] = [Aspect::Files, Aspect::Packages, Aspect::Settings];

    pub fn defined_by(self, c: &StoredConfig) -> bool {
        match self {
            Self::Files => !c.files.is_empty(),
            Self::Packages => !c.packages.is_empty(),
            Self::Settings => c.settings.is_some(),
        }
    }
}

/// What agents are resolved against: the active version of every config, and the versions that
/// active rollouts have given to the agents they enrolled.
#[derive(Debug, Default)]
pub struct Desired {
    /// Active versions, sorted by name.
    pub configs: Vec<StoredConfig>,
    /// Active (running or paused) rollouts by config name.
    pub rollouts: HashMap<String, RolloutTarget>,
    /// Which rollout (config name) each enrolled agent is in: at most one per agent.
    pub enrolled: HashMap<Uuid, String>,
    /// Each config's files composed as the supervisor composes them (None: they do not compose),
    /// and the components (`kind/type`) they need, by hash: read once per desired state, for
    /// drift and each agent's build, instead of once per agent message.
    parsed: HashMap<String, Parsed>,
    /// Drift verdicts already reached, by desired config hash and effective config hash: a fleet
    /// reports a handful of effective configs, each tens of KB of YAML to parse, and every agent
    /// that applies a config reports the same one.
    verdicts: parking_lot::Mutex<HashMap<(String, Vec<u8>), DriftVerdict>>,
}

/// Verdicts remembered per desired state at most (all are forgotten past it).
const MAX_VERDICTS: usize = 4096;

/// Whether an agent runs its desired config: exactly (past what the supervisor adds), and in
/// what it sets ([`drift::same`], [`drift::runs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriftVerdict {
    pub runs_desired: bool,
    pub drift: Drift,
}

#[derive(Debug)]
struct Parsed {
    composed: Option<serde_json::Value>,
    needs: Vec<String>,
}

impl Parsed {
    fn of(c: &StoredConfig) -> Self {
        let composed = drift::compose_files(&c.files);
        let needs = composed
            .as_ref()
            .map_or_else(Vec::new, components::needed_in);
        Self { composed, needs }
    }
}

#[derive(Debug)]
pub struct RolloutTarget {
    pub id: String,
    pub target: StoredConfig,
}

impl Desired {
    pub fn new(configs: Vec<StoredConfig>) -> Self {
        let mut d = Self::default();
        for c in &configs {
            d.note_needs(c);
        }
        d.configs = configs;
        d
    }

    fn note_needs(&mut self, c: &StoredConfig) {
        if !self.parsed.contains_key(&c.hash) {
            self.parsed.insert(c.hash.clone(), Parsed::of(c));
        }
    }

    /// The components (`kind/type`) config `c`'s files need.
    pub fn needs(&self, c: &StoredConfig) -> Cow<'_, [String]> {
        match self.parsed.get(&c.hash) {
            Some(p) => Cow::Borrowed(&p.needs),
            None => Cow::Owned(components::needed(&c.files)),
        }
    }

    /// The verdict on an agent running effective config `effective_hash` with desired config
    /// `c`: remembered, or reached by `judge` (and remembered when the hash names the config).
    pub fn drift_verdict(
        &self,
        c: &StoredConfig,
        effective_hash: &[u8],
        judge: impl FnOnce() -> DriftVerdict,
    ) -> DriftVerdict {
        if effective_hash.is_empty() {
            return judge();
        }
        let key = (c.hash.clone(), effective_hash.to_vec());
        if let Some(v) = self.verdicts.lock().get(&key) {
            return *v;
        }
        let verdict = judge();
        let mut verdicts = self.verdicts.lock();
        if verdicts.len() >= MAX_VERDICTS {
            verdicts.clear();
        }
        verdicts.insert(key, verdict);
        verdict
    }

    /// Config `c`'s files composed as the supervisor composes them; None when they do not.
    pub fn composed(&self, c: &StoredConfig) -> Option<Cow<'_, serde_json::Value>> {
        match self.parsed.get(&c.hash) {
            Some(p) => p.composed.as_ref().map(Cow::Borrowed),
            None => drift::compose_files(&c.files).map(Cow::Owned),
        }
    }

    /// Adds an active rollout of `target` (a version of config `target.name`) to `agents`.
    pub fn add_rollout(&mut self, id: &str, target: StoredConfig, agents: &HashSet<Uuid>) {
        for uid in agents {
            self.enrolled.insert(*uid, target.name.clone());
        }
        self.note_needs(&target);
        let name = target.name.clone();
        let id = id.to_owned();
        self.rollouts.insert(name, RolloutTarget { id, target });
    }

    /// What identifies this desired state: two with the same fingerprint resolve every agent alike.
    pub fn fingerprint(&self) -> Vec<(String, u64, String, usize)> {
        // The hash too: a version another region made under the same number replaces one here.
        let mut f: Vec<_> = self
            .configs
            .iter()
            .map(|c| (c.name.clone(), c.version, c.hash.clone(), 0))
            .chain(self.rollouts.values().map(|r| {
                let enrolled = self.enrolled.values().filter(|n| **n == r.target.name);
                (
                    format!("rollout/{}", r.id),
                    r.target.version,
                    r.target.hash.clone(),
                    enrolled.count(),
                )
            }))
            .collect();
        f.sort();
        f
    }

    /// The config agent `uid` with attributes `attrs` gets `aspect` from.
    pub fn resolve<A: Attributes + ?Sized>(
        &self,
        uid: Option<&Uuid>,
        attrs: &A,
        aspect: Aspect,
    ) -> Option<&StoredConfig> {
        let rollout = uid
            .and_then(|u| self.enrolled.get(u))
            .and_then(|name| self.rollouts.get(name));
        match rollout {
            Some(r) => resolve_among(self.with_version(&r.target), attrs, aspect),
            None => resolve_among(self.configs.iter(), attrs, aspect),
        }
    }

    /// The active configs with `version` in place of its name's active version.
    pub fn with_version<'a>(
        &'a self,
        version: &'a StoredConfig,
    ) -> impl Iterator<Item = &'a StoredConfig> + Clone {
        self.configs
            .iter()
            .filter(move |c| c.name != version.name)
            .chain(std::iter::once(version))
    }
}

/// The OpAMP config_hash of a set of files.
pub fn config_hash<'a>(files: impl IntoIterator<Item = (&'a str, &'a str, &'a [u8])>) -> [u8; 32] {
    let mut files: Vec<_> = files.into_iter().collect();
    files.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = Sha256::new();
    for (name, content_type, body) in files {
        for part in [name.as_bytes(), content_type.as_bytes(), body] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
    }
    h.finalize().into()
}

pub fn hash_of_files(files: &BTreeMap<String, ConfigFile>) -> [u8; 32] {
    config_hash(
        files
            .iter()
            .map(|(n, f)| (n.as_str(), f.content_type.as_str(), f.body.as_bytes())),
    )
}

/// Hash of a config map as an agent reports it (used to show the effective config's hash).
pub fn hash_of_config_map(map: &AgentConfigMap) -> [u8; 32] {
    config_hash(
        map.config_map
            .iter()
            .map(|(n, f)| (n.as_str(), f.content_type.as_str(), &f.body[..])),
    )
}

/// Content type sent with a file, from its name.
pub fn content_type_for(file_name: &str) -> &'static str {
    let ext = file_name
        .rsplit_once('.')
        .map_or("", |(_, e)| e)
        .to_ascii_lowercase();
    match ext.as_str() {
        "yaml" | "yml" => "text/yaml",
        "json" => "application/json",
        "toml" => "application/toml",
        _ => "text/plain",
    }
}

/// The config among `configs` that gives `aspect` to an agent with `attrs`, by the precedence in
/// this module's docs.
pub fn resolve_among<'a, A: Attributes + ?Sized>(
    configs: impl Iterator<Item = &'a StoredConfig>,
    attrs: &A,
    aspect: Aspect,
) -> Option<&'a StoredConfig> {
    configs
        .filter(|c| aspect.defined_by(c) && c.selector.matches(attrs))
        .min_by(|a, b| {
            b.selector
                .specificity()
                .cmp(&a.selector.specificity())
                .then_with(|| a.name.cmp(&b.name))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drift_verdict_is_reached_once_per_desired_and_effective_config() {
        let desired = Desired::default();
        let (mut a, mut b) = (cfg("a", ""), cfg("b", ""));
        (a.hash, b.hash) = ("aa".into(), "bb".into());
        let judged = std::cell::Cell::new(0);
        let judge = |runs_desired| {
            judged.set(judged.get() + 1);
            DriftVerdict {
                runs_desired,
                drift: Drift::InSync,
            }
        };
        assert!(
            desired
                .drift_verdict(&a, b"e1", || judge(true))
                .runs_desired
        );
        assert!(
            desired
                .drift_verdict(&a, b"e1", || judge(false))
                .runs_desired,
            "remembered"
        );
        assert!(
            !desired
                .drift_verdict(&a, b"e2", || judge(false))
                .runs_desired
        );
        assert!(
            !desired
                .drift_verdict(&b, b"e1", || judge(false))
                .runs_desired
        );
        assert_eq!(judged.get(), 3);
        desired.drift_verdict(&a, b"", || judge(true));
        desired.drift_verdict(&a, b"", || judge(true));
        assert_eq!(judged.get(), 5, "no hash, nothing to remember it by");
    }

    fn cfg(name: &str, sel: &str) -> StoredConfig {
        StoredConfig {
            name: name.into(),
            version: 1,
            selector: sel.parse().unwrap(),
            files: BTreeMap::from([(
                "c.yaml".into(),
                ConfigFile {
                    body: String::new(),
                    content_type: String::new(),
                },
            )]),
            hash: String::new(),
            packages: BTreeMap::new(),
            settings: None,
            created_unix_ms: 0,
            created_by: String::new(),
            comment: String::new(),
        }
    }

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn most_specific_selector_wins_then_name() {
        let configs = [
            cfg("default", ""),
            cfg("prod", "env=prod"),
            cfg("prod-eu", "env=prod,region in (eu,uk)"),
            cfg("a-prod", "env=prod"),
            cfg("not-canary", "env=dev,!canary"),
        ];
        let pick =
            |a| resolve_among(configs.iter(), &attrs(a), Aspect::Files).map(|c| c.name.as_str());
        assert_eq!(pick(&[("env", "prod"), ("region", "eu")]), Some("prod-eu"));
        assert_eq!(pick(&[("env", "prod"), ("region", "us")]), Some("a-prod"));
        assert_eq!(pick(&[("env", "dev")]), Some("not-canary"));
        assert_eq!(pick(&[("env", "dev"), ("canary", "")]), Some("default"));
        let one = resolve_among(
            configs[1..2].iter(),
            &attrs(&[("env", "dev")]),
            Aspect::Files,
        );
        assert_eq!(one, None);
        // A config without files gives no files, however specific its selector.
        let mut pkgs = cfg("pkgs", "env=prod,region=eu,tier=1");
        pkgs.files.clear();
        let with_pkgs: Vec<_> = configs.iter().cloned().chain([pkgs]).collect();
        let a = attrs(&[("env", "prod"), ("region", "eu"), ("tier", "1")]);
        let got = resolve_among(with_pkgs.iter(), &a, Aspect::Files).map(|c| c.name.as_str());
        assert_eq!(got, Some("prod-eu"));
    }

    #[test]
    fn hash_is_deterministic_and_covers_names_types_and_bodies() {
        let a = config_hash([("a.yaml", "text/yaml", b"x".as_slice()), ("b", "", b"y")]);
        let b = config_hash([("b", "", b"y".as_slice()), ("a.yaml", "text/yaml", b"x")]);
        assert_eq!(a, b, "file order does not matter");
        assert_ne!(
            a,
            config_hash([("a.yaml", "text/plain", b"x".as_slice()), ("b", "", b"y")])
        );
        assert_ne!(
            a,
            config_hash([("a.yaml", "text/yaml", b"xb".as_slice()), ("", "", b"y")])
        );
        // Pinned: a change here would make every agent in every fleet re-apply its config.
        assert_eq!(
            hex::encode(config_hash([("c.yaml", "text/yaml", b"k: v".as_slice())])),
            "ebb75b7194fc1c0be9260be9dbf7314abf02d164f21934e98f543c6640d8865e"
        );
    }

    #[test]
    fn content_types_follow_the_file_name() {
        assert_eq!(content_type_for("collector.YAML"), "text/yaml");
        assert_eq!(content_type_for("x.json"), "application/json");
        assert_eq!(content_type_for("README"), "text/plain");
    }
}
