//! Named configs and how an agent's config is chosen.
//!
//! Precedence when several selectors match an agent: the config whose selector has the most
//! key/value pairs wins (the most specific); among equally specific ones, the name that sorts
//! first wins. An empty selector matches every agent, so it serves as the fleet default.
//! The hash sent to agents is SHA-256 over every file, in file-name order, each as
//! `len(name) name len(content_type) content_type len(body) body` (lengths as 8-byte big-endian):
//! the same files always give the same hash, on every node and every build.

use flotilla_common::store::{ConfigFile, StoredConfig};
use flotilla_proto::opamp::{AgentConfigFile, AgentConfigMap, AgentRemoteConfig};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

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
            .map(|(n, f)| (n.as_str(), f.content_type.as_str(), f.body.as_slice())),
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

/// Does `selector` match an agent with these attributes?
pub fn matches(selector: &BTreeMap<String, String>, attrs: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| attrs.get(k) == Some(v))
}

/// The config an agent with `attrs` should run, by the precedence in this module's docs.
pub fn resolve<'a>(
    configs: &'a [StoredConfig],
    attrs: &BTreeMap<String, String>,
) -> Option<&'a StoredConfig> {
    configs
        .iter()
        .filter(|c| matches(&c.selector, attrs))
        .min_by(|a, b| {
            b.selector
                .len()
                .cmp(&a.selector.len())
                .then_with(|| a.name.cmp(&b.name))
        })
}

pub fn remote_config_message(cfg: &StoredConfig) -> AgentRemoteConfig {
    AgentRemoteConfig {
        config: Some(AgentConfigMap {
            config_map: cfg
                .files
                .iter()
                .map(|(name, f)| {
                    let file = AgentConfigFile {
                        body: f.body.clone().into_bytes(),
                        content_type: f.content_type.clone(),
                    };
                    (name.clone(), file)
                })
                .collect(),
        }),
        config_hash: hex::decode(&cfg.hash).unwrap_or_default(),
    }
}

/// Names allowed for configs: they appear in URLs and CLI arguments.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(name: &str, sel: &[(&str, &str)]) -> StoredConfig {
        StoredConfig {
            name: name.into(),
            version: 1,
            selector: sel
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            files: BTreeMap::new(),
            hash: String::new(),
            created_unix_ms: 0,
            created_by: String::new(),
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
        let configs = vec![
            cfg("default", &[]),
            cfg("prod", &[("env", "prod")]),
            cfg("prod-eu", &[("env", "prod"), ("region", "eu")]),
            cfg("a-prod", &[("env", "prod")]),
        ];
        let pick = |a| resolve(&configs, &attrs(a)).map(|c| c.name.as_str());
        assert_eq!(pick(&[("env", "prod"), ("region", "eu")]), Some("prod-eu"));
        assert_eq!(pick(&[("env", "prod"), ("region", "us")]), Some("a-prod"));
        assert_eq!(pick(&[("env", "dev")]), Some("default"));
        assert_eq!(resolve(&configs[1..2], &attrs(&[("env", "dev")])), None);
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
    fn content_types_and_names() {
        assert_eq!(content_type_for("collector.YAML"), "text/yaml");
        assert_eq!(content_type_for("x.json"), "application/json");
        assert_eq!(content_type_for("README"), "text/plain");
        assert!(valid_name("otel-base_1.2"));
        assert!(!valid_name("a/b") && !valid_name(""));
    }
}
