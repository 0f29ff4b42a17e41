//! What the collector's OpAMP supervisor does that a bare OpAMP client does not (see
//! docs/collectors.md): [`crate::sim::SimAgent::supervisor`] uses it. The supervisor composes the
//! collector's config from the remote files (each read as YAML, in key order, "" last; maps
//! merged, lists replaced) and its own sections (the `opamp` extension, appended to
//! `service::extensions`, and own telemetry carrying `service.instance.id`), and reports the
//! result as its effective config under the one key "". Written here as JSON, which is YAML.

use flotilla_proto::opamp::{
    AgentConfigFile, AgentConfigMap, AvailableComponents, ComponentDetails,
};
use saphyr::{LoadableYamlNode, Scalar, Yaml};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// The components of a typical collector build (a subset of contrib), for swarms.
pub const TYPICAL_BUILD: &[(&str, &[&str])] = &[
    (
        "receivers",
        &["otlp", "hostmetrics", "filelog", "prometheus"],
    ),
    (
        "processors",
        &["batch", "memory_limiter", "resource", "attributes"],
    ),
    (
        "exporters",
        &["otlp", "otlphttp", "debug", "prometheusremotewrite"],
    ),
    ("extensions", &["health_check", "pprof"]),
    ("connectors", &["forward"]),
];

/// The supervisor's state beside the protocol's.
#[derive(Debug, Clone)]
pub struct Habits {
    /// What the collector's build contains: reported by hash alone until the server asks.
    pub components: AvailableComponents,
    /// The server asked for the component list: the next message carries it.
    pub components_asked: bool,
    /// The collector is up and reports healthy; false from the supervisor's start until then.
    pub collector_up: bool,
    /// The composed config the collector runs (JSON text), to tell a change from an equivalent.
    pub composed: String,
    /// The remote config it runs, to compose again (a new instance uid changes its own sections).
    pub remote: AgentConfigMap,
}

impl Habits {
    /// A supervisor whose collector build has `components` (kind, types), e.g.
    /// `("exporters", &["debug", "otlp"])`.
    pub fn new(components: &[(&str, &[&str])]) -> Self {
        let kinds: std::collections::HashMap<String, ComponentDetails> = components
            .iter()
            .map(|(kind, types)| {
                let types = types
                    .iter()
                    .map(|t| (t.to_string(), ComponentDetails::default()))
                    .collect();
                (
                    kind.to_string(),
                    ComponentDetails {
                        sub_component_map: types,
                        ..Default::default()
                    },
                )
            })
            .collect();
        let mut sorted: Vec<String> = components
            .iter()
            .flat_map(|(k, types)| types.iter().map(move |t| format!("{k}/{t}")))
            .collect();
        sorted.sort();
        Self {
            components: AvailableComponents {
                components: kinds,
                hash: Sha256::digest(sorted.join("\n")).to_vec(),
            },
            components_asked: false,
            collector_up: false,
            composed: String::new(),
            remote: AgentConfigMap::default(),
        }
    }

    /// Whether the collector can run composed config `map` (from [`compose`]): Err names the
    /// first component its build lacks, as the collector says it.
    pub fn check(&self, map: &AgentConfigMap) -> Result<(), String> {
        let body = map.config_map.get("").map_or(&[][..], |f| &f.body[..]);
        let root: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        for kind in [
            "receivers",
            "processors",
            "exporters",
            "connectors",
            "extensions",
        ] {
            for id in root[kind].as_object().into_iter().flat_map(Map::keys) {
                let ty = id.split_once('/').map_or(id.as_str(), |(t, _)| t);
                let built = self.components.components.get(kind);
                // The supervisor's own extension is always there.
                let known =
                    ty == "opamp" || built.is_some_and(|b| b.sub_component_map.contains_key(ty));
                if !known {
                    return Err(format!("'{kind}' unknown type: \"{ty}\" for id: \"{id}\""));
                }
            }
        }
        Ok(())
    }

    /// The AvailableComponents for the next message: the list when asked for, else the hash.
    pub fn components_report(&mut self) -> AvailableComponents {
        if std::mem::take(&mut self.components_asked) {
            self.components.clone()
        } else {
            AvailableComponents {
                hash: self.components.hash.clone(),
                components: Default::default(),
            }
        }
    }
}

/// The collector's config composed from the remote `files` for agent `uid`, as the effective
/// config map the supervisor reports; Err when a file is not a YAML map (the supervisor fails
/// such a config).
pub fn compose(files: &AgentConfigMap, uid: &str) -> Result<AgentConfigMap, String> {
    let mut names: Vec<&String> = files.config_map.keys().filter(|k| !k.is_empty()).collect();
    names.sort();
    let empty = String::new();
    if files.config_map.contains_key("") {
        names.push(&empty);
    }
    let mut out = Value::Object(Map::new());
    for name in names {
        let body = String::from_utf8_lossy(&files.config_map[name].body).into_owned();
        let docs = Yaml::load_from_str(&body).map_err(|e| format!("{name:?}: {e}"))?;
        match docs.first().map(to_json) {
            None | Some(Value::Null) => {}
            Some(doc @ Value::Object(_)) => merge(&mut out, doc, false, &mut Vec::new()),
            Some(_) => return Err(format!("{name:?} is not a YAML map")),
        }
    }
    let own = json!({
        "extensions": {"opamp": {"server": {"ws": {"endpoint": "ws://127.0.0.1:4320/v1/opamp"}}}},
        "service": {
            "extensions": ["opamp"],
            "telemetry": {"resource": {"service.instance.id": uid}},
        },
    });
    merge(&mut out, own, true, &mut Vec::new());
    let body = serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?;
    Ok(AgentConfigMap {
        config_map: [(
            String::new(),
            AgentConfigFile {
                body: body.into_bytes().into(),
                content_type: String::new(),
            },
        )]
        .into(),
    })
}

/// Merges `over` into `base` as the supervisor does: maps key by key, lists replaced; but when
/// `concat` (its own sections over the remote config), `service::extensions` concatenated.
fn merge(base: &mut Value, over: Value, concat: bool, path: &mut Vec<String>) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                path.push(k.clone());
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v, concat, path),
                    None => {
                        b.insert(k, v);
                    }
                }
                path.pop();
            }
        }
        (Value::Array(b), Value::Array(o)) if concat && path[..] == ["service", "extensions"] => {
            b.extend(o.into_iter().filter(|x| !b.contains(x)).collect::<Vec<_>>());
        }
        (b, o) => *b = o,
    }
}

fn to_json(y: &Yaml) -> Value {
    match y {
        Yaml::Value(Scalar::Boolean(b)) => Value::Bool(*b),
        Yaml::Value(Scalar::Integer(i)) => json!(i),
        Yaml::Value(Scalar::FloatingPoint(f)) => json!(f.into_inner()),
        Yaml::Value(Scalar::String(s)) | Yaml::Representation(s, _, _) => {
            Value::String(s.to_string())
        }
        Yaml::Sequence(items) => Value::Array(items.iter().map(to_json).collect()),
        Yaml::Mapping(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = match to_json(k) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Yaml::Tagged(_, inner) => to_json(inner),
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(files: &[(&str, &str)]) -> AgentConfigMap {
        AgentConfigMap {
            config_map: files
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        AgentConfigFile {
                            body: v.as_bytes().to_vec().into(),
                            content_type: "text/plain".into(),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn files_compose_in_key_order_the_empty_key_last_with_the_supervisors_sections() {
        let files = map(&[
            ("", "exporters: {debug: {verbosity: basic}}"),
            (
                "b.yaml",
                "exporters: {debug: {verbosity: detailed}}\nservice: {extensions: [pprof]}",
            ),
            (
                "a.yaml",
                "receivers: {otlp: {}}\nservice: {extensions: [health_check]}",
            ),
        ]);
        let out = compose(&files, "u1").unwrap();
        let body: Value = serde_json::from_slice(&out.config_map[""].body).unwrap();
        assert_eq!(
            body["exporters"]["debug"]["verbosity"], "basic",
            "\"\" last"
        );
        assert_eq!(body["receivers"]["otlp"], json!({}));
        assert_eq!(
            body["service"]["extensions"],
            json!(["pprof", "opamp"]),
            "lists replaced, the supervisor's extension appended"
        );
        assert_eq!(
            body["service"]["telemetry"]["resource"]["service.instance.id"],
            "u1"
        );
        assert!(compose(&map(&[("a.yaml", "- a")]), "u1").is_err());
    }

    #[test]
    fn components_go_by_hash_until_asked_for() {
        let mut h = Habits::new(&[("exporters", &["debug", "kafka"])]);
        assert!(h.components_report().components.is_empty());
        h.components_asked = true;
        let listed = h.components_report();
        assert_eq!(listed.components["exporters"].sub_component_map.len(), 2);
        assert_eq!(listed.hash, h.components.hash);
        assert!(h.components_report().components.is_empty(), "once");
    }
}
