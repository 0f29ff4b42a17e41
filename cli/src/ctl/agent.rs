//! One agent as `flotilla ctl agents get` prints it: its description, configs, components,
//! custom messages and, when it sends them, its own metrics.

use super::metrics::print_agent_block;
use super::output::{field, out, pairs};
use serde_json::{Value, json};

/// One agent's text form; `wide` adds its health tree, effective config and packages.
pub(super) fn print_agent(v: &Value, wide: bool) -> anyhow::Result<()> {
    pairs(v);
    for key in [
        "identifying_attributes",
        "non_identifying_attributes",
        "labels",
    ] {
        for (k, val) in v[key].as_object().into_iter().flatten() {
            out!("{key}: {k}={}", val.as_str().unwrap_or_default());
        }
    }
    let desired = &v["desired_config"];
    if desired.is_object() {
        out!(
            "desired config: {} v{}",
            field(desired, "name"),
            desired["version"]
        );
    }
    out!(
        "reported config: {} {}",
        field(&v["remote_config_status"], "status"),
        v["remote_config_status"]["error"]
            .as_str()
            .unwrap_or_default()
    );
    for (key, label) in [("rolled_back", "rolled back from"), ("not_sent", "config")] {
        let refusal = &v["remote_config_status"][key];
        if refusal.is_object() {
            out!(
                "{label}: {} {}",
                field(refusal, "hash"),
                refusal["error"].as_str().unwrap_or_default()
            );
        }
    }
    for (kind, types) in v["available_components"]["components"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let types: Vec<&str> = types
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        out!("components: {kind}: {}", types.join(" "));
    }
    let custom: Vec<&str> = v["custom_capabilities"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !custom.is_empty() {
        out!("custom capabilities: {}", custom.join(" "));
    }
    for (key, verb, when) in [
        ("custom_messages", "received", "received"),
        ("pending_custom_messages", "waiting", "expires"),
    ] {
        for m in v[key].as_array().into_iter().flatten() {
            out!(
                "custom message {verb}: {} {} ({} bytes) {when} {}",
                field(m, "capability"),
                field(m, "type"),
                m["data_bytes"],
                field(m, when)
            );
        }
    }
    print_agent_block(&v["own_metrics"]);
    if !wide {
        out!("(health tree, effective config, packages: -o wide, json or yaml)");
    } else {
        out!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "health": v["health"],
                "effective_config": v["effective_config"],
                "packages": v["packages"],
            }))?
        );
    }
    Ok(())
}
