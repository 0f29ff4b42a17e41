//! Whether an agent runs what it was sent: its effective config against its desired config, read
//! the way the collector's OpAMP supervisor composes one. Pure.
//!
//! The supervisor parses every file of a remote config map as YAML (whatever its content type)
//! and merges them in key order, the "" key last: maps merge key by key, anything else is
//! replaced. It then adds what it runs the collector with: the `opamp` extension (listed in
//! `service.extensions`), `service.telemetry` (own telemetry, `service.instance.id`), and its
//! local config files. So an agent runs its desired config when every value the desired config
//! sets is in the effective config with the same value; `service.extensions` may list more.

use super::yaml;
use flotilla_common::store::ConfigFile;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The first document of `body` read as YAML (null when there is none); None when it does not
/// parse, or is nested too deep or uses aliases (what agents report is read with care).
fn parse(body: &str) -> Option<Value> {
    use saphyr::LoadableYamlNode;
    yaml::check(body, false).ok()?;
    let docs = saphyr::Yaml::load_from_str(body).ok()?;
    Some(docs.first().map_or(Value::Null, yaml::to_json))
}

/// Merges `over` into `base`: maps key by key, anything else replaced.
fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// A config map as the supervisor composes it: files in key order, "" last, each read as YAML.
/// None when a file does not parse (the supervisor would refuse it too).
pub fn compose(files: &BTreeMap<String, String>) -> Option<Value> {
    let ordered = files
        .iter()
        .filter(|(k, _)| !k.is_empty())
        .chain(files.get_key_value(""));
    let mut out = Value::Object(Map::new());
    for (_, body) in ordered {
        match parse(body)? {
            Value::Null => {}
            doc @ Value::Object(_) => merge(&mut out, doc),
            _ => return None,
        }
    }
    Some(out)
}

/// [`compose`] of a stored config's files.
pub fn compose_files(files: &BTreeMap<String, ConfigFile>) -> Option<Value> {
    let bodies = files
        .iter()
        .map(|(name, f)| (name.clone(), f.body.clone()))
        .collect();
    compose(&bodies)
}

/// Whether `effective` holds every value `desired` sets (see the module's doc); lists must be
/// equal, but for `service.extensions`, which may list more.
pub fn runs(desired: &Value, effective: &Value) -> bool {
    covers(desired, effective, &mut Vec::new())
}

/// Whether `effective` is exactly `desired` past the supervisor's own sections (its `opamp`
/// extension and `service.telemetry`): it holds every value `desired` sets and sets nothing
/// more. The supervisor sends no status for a config that composes to what it already runs (an
/// equivalent config under a new hash), so this is how such an agent is known to run it.
pub fn same(desired: &Value, effective: &Value) -> bool {
    runs(desired, effective) && runs(&without_supervisor(effective), desired)
}

/// `effective` without what the supervisor adds to every config.
fn without_supervisor(effective: &Value) -> Value {
    let mut v = effective.clone();
    if let Some(ext) = v.get_mut("extensions").and_then(Value::as_object_mut) {
        ext.remove("opamp");
    }
    if let Some(service) = v.get_mut("service").and_then(Value::as_object_mut) {
        service.remove("telemetry");
        if let Some(list) = service.get_mut("extensions").and_then(Value::as_array_mut) {
            list.retain(|x| x != "opamp");
            if list.is_empty() {
                service.remove("extensions");
            }
        }
    }
    if let Some(root) = v.as_object_mut()
        && root
            .get("extensions")
            .is_some_and(|e| e.as_object().is_some_and(Map::is_empty))
    {
        root.remove("extensions");
    }
    v
}

fn covers<'a>(want: &'a Value, have: &Value, path: &mut Vec<&'a str>) -> bool {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => w.iter().all(|(k, v)| {
            path.push(k);
            let ok = h.get(k).is_some_and(|hv| covers(v, hv, path));
            path.pop();
            ok
        }),
        (Value::Array(w), Value::Array(h)) if path[..] == ["service", "extensions"] => {
            w.iter().all(|x| h.contains(x))
        }
        // `debug: {}` and `debug:` (null) both mean the component's defaults.
        (Value::Null, Value::Object(m)) | (Value::Object(m), Value::Null) => m.is_empty(),
        (w, h) => w == h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn files_merge_in_key_order_with_the_empty_key_last() {
        let composed = compose(&files(&[
            ("", "exporters: {debug: {verbosity: detailed}}\n"),
            (
                "b.yaml",
                "exporters: {debug: {verbosity: basic}, otlp: {}}\nlist: [3]\n",
            ),
            ("a.yaml", "receivers: {otlp: {}}\nlist: [1, 2]\n"),
        ]))
        .unwrap();
        assert_eq!(
            composed,
            json!({"receivers": {"otlp": {}}, "list": [3],
                   "exporters": {"debug": {"verbosity": "detailed"}, "otlp": {}}})
        );
        assert_eq!(compose(&files(&[("a", "[unclosed")])), None);
        assert_eq!(compose(&files(&[("a", "- a list")])), None);
        assert_eq!(compose(&files(&[("a", "")])), Some(json!({})));
    }

    #[test]
    fn what_the_supervisor_adds_is_no_drift_and_a_changed_value_is() {
        let desired = compose(&files(&[(
            "collector.yaml",
            "receivers: {otlp: {protocols: {grpc: {}}}}\nexporters: {debug: {}}\n\
             service:\n  extensions: [health_check]\n  pipelines:\n    traces: {receivers: [otlp], exporters: [debug]}\n\
             extensions: {health_check: {}}\n",
        )]))
        .unwrap();
        // One "" entry with the opamp extension, own telemetry and defaults filled in.
        let effective = parse(
            "receivers:\n  otlp:\n    protocols:\n      grpc: {}\nexporters:\n  debug: {}\n\
             extensions:\n  health_check: {}\n  opamp:\n    server: {ws: {endpoint: wss://flotilla:4320/v1/opamp}}\n\
             service:\n  extensions: [health_check, opamp]\n  telemetry:\n    resource: {service.instance.id: x}\n  \
             pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [debug]\n",
        )
        .unwrap();
        assert!(runs(&desired, &effective));
        let mut changed = effective.clone();
        changed["service"]["pipelines"]["traces"]["exporters"] = json!(["debug", "otlp"]);
        assert!(!runs(&desired, &changed), "a pipeline list must be equal");
        let mut missing = effective.clone();
        missing["receivers"]["otlp"]["protocols"] = json!({"http": {}});
        assert!(!runs(&desired, &missing));
        let mut fewer = effective.clone();
        fewer["service"]["extensions"] = json!(["opamp"]);
        assert!(!runs(&desired, &fewer));
        let mut null_defaults = effective;
        null_defaults["exporters"]["debug"] = Value::Null;
        assert!(runs(&desired, &null_defaults), "`debug:` is `debug: {{}}`");
    }

    #[test]
    fn the_same_config_past_the_supervisors_sections_is_told_from_a_subset() {
        let desired = compose(&files(&[(
            "c.yaml",
            "# v2: a comment only\nreceivers: {otlp: }\nexporters: {debug: }\n\
             service: {pipelines: {traces: {receivers: [otlp], exporters: [debug]}}}\n",
        )]))
        .unwrap();
        let effective = json!({
            "receivers": {"otlp": {}}, "exporters": {"debug": {}},
            "extensions": {"opamp": {"server": {}}},
            "service": {"extensions": ["opamp"], "telemetry": {"resource": {}},
                        "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["debug"]}}},
        });
        assert!(same(&desired, &effective));
        // It runs more than the desired config (the desired one dropped an exporter): not it.
        let mut more = effective.clone();
        more["exporters"]["otlp"] = json!({});
        assert!(runs(&desired, &more) && !same(&desired, &more));
    }
}
