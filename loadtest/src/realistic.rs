//! What a collector of a real fleet reports beyond the bare minimum of [`SimAgent::new`]: more
//! description attributes (host, OS, cloud and Kubernetes ones, with values of its own), a health
//! tree of many components, and an effective config of a size seen in production. [`Shape`] says
//! how much; [`Dress`] is built once per swarm from it and puts it on each agent, sharing what all
//! agents report alike (the health tree's template, the effective config's padding) so that a
//! swarm of 17,000 agents does not hold 17,000 copies of 20 KB.
//!
//! Only what is sent in full reports grows: heartbeats stay the bare header (OpAMP: an agent
//! sends a field again only when it changed, or when the server asks for the full state).

use crate::sim::{SimAgent, kv};
use flotilla_proto::opamp::{AgentConfigFile, AgentConfigMap, ComponentHealth};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// How much a swarm's agents report; zeros keep [`SimAgent`]'s minimal report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Shape {
    /// Total AgentDescription attributes (identifying and non-identifying) per agent; those the
    /// agent has anyway count, the rest are added.
    pub attributes: usize,
    /// Entries of the health tree below its root (pipelines and their components).
    pub components: usize,
    /// Bytes of the effective config (all files) before any config is pushed; after a push, the
    /// pushed files plus the same padding.
    pub effective_config_bytes: usize,
}

impl Shape {
    /// `--realistic`: a collector on a Kubernetes node with three pipelines and a 20 KB config.
    pub const REALISTIC: Self = Self {
        attributes: 15,
        components: 30,
        effective_config_bytes: 20_000,
    };
}

/// Attributes a collector's resource detection finds, in the order they are added.
const EXTRA_ATTRIBUTES: &[&str] = &[
    "host.id",
    "host.arch",
    "os.description",
    "cloud.provider",
    "cloud.availability_zone",
    "k8s.cluster.name",
    "k8s.namespace.name",
    "k8s.node.name",
    "k8s.pod.name",
    "k8s.pod.uid",
    "k8s.daemonset.name",
    "host.ip",
    "host.type",
    "cloud.account.id",
    "container.id",
    "process.pid",
    "service.namespace",
    "os.version",
];

/// The value of attribute `key` for agent `index` (uid `uid`): plausible, and different per
/// agent where it is in a real fleet.
fn attribute_value(key: &str, index: usize, uid: &str) -> String {
    let hex = uid.replace('-', "");
    let node = index / 8;
    match key {
        "host.id" => hex[..16].to_owned(),
        "host.arch" => ["amd64", "arm64"][index % 5 / 4].to_owned(),
        "os.description" => "Ubuntu 22.04.4 LTS (Jammy Jellyfish)".to_owned(),
        "cloud.provider" => "aws".to_owned(),
        "cloud.availability_zone" => format!("zone-{}", ["a", "b", "c"][index % 3]),
        "k8s.cluster.name" => format!("cluster-{:02}", index % 40),
        "k8s.namespace.name" => "observability".to_owned(),
        "k8s.node.name" => format!(
            "ip-10-{}-{}-{}.internal",
            node / 65536 % 256,
            node / 256 % 256,
            node % 256
        ),
        "k8s.pod.name" => format!("otel-agent-{}", &hex[hex.len() - 5..]),
        "k8s.pod.uid" => uid.to_owned(),
        "k8s.daemonset.name" => "otel-agent".to_owned(),
        "host.ip" => format!(
            "10.{}.{}.{}",
            index / 65536 % 256,
            index / 256 % 256,
            index % 256
        ),
        "host.type" => ["m6i.xlarge", "m6g.2xlarge", "c6i.4xlarge"][index % 3].to_owned(),
        "cloud.account.id" => format!("{:012}", 100_000_000_000 + index % 12),
        "container.id" => format!("{hex}{hex}"),
        "process.pid" => (1 + index % 32_000).to_string(),
        "service.namespace" => "platform".to_owned(),
        "os.version" => "22.04".to_owned(),
        _ => format!("value-{index}"),
    }
}

/// Health of a collector with `components` entries below the root: pipelines, each with its
/// receivers, processors and exporters, all healthy.
pub fn health(components: usize) -> ComponentHealth {
    const PIPELINES: &[&str] = &["traces", "metrics", "logs"];
    const PARTS: &[&str] = &[
        "receiver:otlp",
        "processor:memory_limiter",
        "processor:k8sattributes",
        "processor:resourcedetection",
        "processor:batch",
        "exporter:otlp",
        "receiver:hostmetrics",
        "receiver:filelog",
        "processor:transform",
        "exporter:prometheusremotewrite",
    ];
    let ok = |map: BTreeMap<String, ComponentHealth>| ComponentHealth {
        healthy: true,
        status: "StatusOK".into(),
        start_time_unix_nano: 1_733_400_000_000_000_000,
        status_time_unix_nano: 1_733_400_000_000_000_000,
        component_health_map: map,
        ..Default::default()
    };
    // One pipeline per 10 entries (at least one), named traces, metrics, logs, traces/2, ...
    let pipelines = components
        .div_ceil(10)
        .clamp(usize::from(components > 0), components);
    let mut children: Vec<BTreeMap<String, ComponentHealth>> = vec![BTreeMap::new(); pipelines];
    for i in 0..components - pipelines {
        let part = PARTS[i / pipelines % PARTS.len()];
        let round = i / pipelines / PARTS.len();
        let name = match round {
            0 => part.to_owned(),
            r => format!("{part}/{}", r + 1),
        };
        children[i % pipelines].insert(name, ok(BTreeMap::new()));
    }
    ok(children
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let name = match i / PIPELINES.len() {
                0 => PIPELINES[i].to_owned(),
                r => format!("{}/{}", PIPELINES[i % PIPELINES.len()], r + 1),
            };
            (format!("pipeline:{name}"), ok(c))
        })
        .collect())
}

/// Entries of a health tree below its root.
pub fn count_components(h: &ComponentHealth) -> usize {
    h.component_health_map
        .values()
        .map(|c| 1 + count_components(c))
        .sum()
}

/// The config a node's collector runs before any is pushed.
pub const BASE_CONFIG: &str = "\
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 0.0.0.0:4317
      http:
        endpoint: 0.0.0.0:4318
  hostmetrics:
    collection_interval: 30s
    scrapers:
      cpu: {}
      memory: {}
      disk: {}
      filesystem: {}
      network: {}
      load: {}
  filelog:
    include: [/var/log/pods/*/*/*.log]
    start_at: end
    include_file_path: true
processors:
  memory_limiter:
    check_interval: 1s
    limit_percentage: 80
    spike_limit_percentage: 25
  batch:
    send_batch_size: 8192
    timeout: 5s
  resourcedetection:
    detectors: [env, system, ec2]
    timeout: 2s
  k8sattributes:
    auth_type: serviceAccount
    passthrough: false
exporters:
  otlp:
    endpoint: otel-gateway.observability.svc:4317
    sending_queue:
      queue_size: 5000
  prometheusremotewrite:
    endpoint: https://metrics.example.internal/api/v1/write
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter, k8sattributes, batch]
      exporters: [otlp]
    metrics:
      receivers: [otlp, hostmetrics]
      processors: [memory_limiter, resourcedetection, batch]
      exporters: [prometheusremotewrite]
    logs:
      receivers: [filelog]
      processors: [memory_limiter, k8sattributes, batch]
      exporters: [otlp]
";

fn yaml_file(body: String) -> AgentConfigFile {
    AgentConfigFile {
        body: body.into_bytes().into(),
        content_type: "text/yaml".into(),
    }
}

/// A transform processor of `bytes` at most (nothing if that is too small for one rule): the
/// rules a platform team renders per node, which make real effective configs tens of KB.
pub fn padding(bytes: usize) -> Option<AgentConfigFile> {
    let mut body = String::from(
        "# Rendered by the node bootstrap: routing rules of this cluster's tenants.\n\
         processors:\n  transform/tenants:\n    error_mode: ignore\n    log_statements:\n      \
         - context: log\n        statements:\n",
    );
    let mut rules = 0;
    loop {
        let rule = format!(
            "          - set(attributes[\"tenant\"], \"tenant-{rules:04}\") where \
             resource.attributes[\"k8s.namespace.name\"] == \"team-{rules:04}\"\n"
        );
        if body.len() + rule.len() > bytes {
            break;
        }
        body.push_str(&rule);
        rules += 1;
    }
    (rules > 0).then(|| yaml_file(body))
}

/// A [`Shape`] made ready to put on agents: what they all share is built once.
#[derive(Debug, Clone, Default)]
pub struct Dress {
    attributes: usize,
    /// With `components`: the health tree of every agent.
    health: Option<ComponentHealth>,
    /// With `effective_config_bytes`: the config it runs first and the padding it adds.
    base: Option<AgentConfigMap>,
    padding: Option<Arc<AgentConfigFile>>,
}

impl Dress {
    pub fn new(shape: Shape) -> Self {
        let n = shape.effective_config_bytes;
        let base = (n > 0).then(|| AgentConfigMap {
            config_map: HashMap::from([("collector.yaml".into(), yaml_file(BASE_CONFIG.into()))]),
        });
        Self {
            attributes: shape.attributes,
            health: (shape.components > 0).then(|| health(shape.components)),
            base,
            padding: padding(n.saturating_sub(BASE_CONFIG.len())).map(Arc::new),
        }
    }

    /// Puts the shape on agent `index`: attributes up to the total, the health tree (a
    /// supervisor's collector reports it once up), the effective config and its padding.
    pub fn put_on(&self, agent: &mut SimAgent, index: usize) {
        let d = &mut agent.description;
        let have = d.identifying_attributes.len() + d.non_identifying_attributes.len();
        let uid = agent.uid.to_string();
        for n in 0..self.attributes.saturating_sub(have) {
            let key = match EXTRA_ATTRIBUTES.get(n) {
                Some(k) => (*k).to_owned(),
                None => format!("host.label.{}", n - EXTRA_ATTRIBUTES.len() + 1),
            };
            let value = attribute_value(&key, index, &uid);
            d.non_identifying_attributes.push(kv(&key, &value));
        }
        if let Some(h) = &self.health {
            match agent.supervisor {
                Some(_) => agent.up_health = Some(h.clone()),
                None => agent.health = h.clone(),
            }
        }
        if agent.effective.is_none() {
            agent.effective.clone_from(&self.base);
        }
        agent.effective_padding.clone_from(&self.padding);
    }
}

/// Bytes of a config map's bodies.
pub fn config_bytes(map: &AgentConfigMap) -> usize {
    map.config_map.values().map(|f| f.body.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::PADDING_FILE;
    use flotilla_proto::opamp::{AgentRemoteConfig, ServerToAgent};

    fn attributes(a: &flotilla_proto::opamp::AgentToServer) -> usize {
        let d = a.agent_description.as_ref().unwrap();
        d.identifying_attributes.len() + d.non_identifying_attributes.len()
    }

    fn dressed(shape: Shape, index: usize) -> SimAgent {
        let mut a = SimAgent::new("svc", &[("host.name", "h"), ("os.type", "linux")]);
        Dress::new(shape).put_on(&mut a, index);
        a
    }

    #[test]
    fn the_realistic_full_report_has_the_asked_attributes_components_and_config_size() {
        let mut a = dressed(Shape::REALISTIC, 7);
        let full = a.full_report();
        assert_eq!(attributes(&full), 15);
        assert_eq!(count_components(full.health.as_ref().unwrap()), 30);
        let map = full.effective_config.unwrap().config_map.unwrap();
        let size = config_bytes(&map) as f64;
        assert!((size - 20_000.0).abs() <= 1_000.0, "{size} bytes");
        assert!(map.config_map.contains_key(PADDING_FILE));
        // The padding is YAML a collector would take.
        use saphyr::LoadableYamlNode;
        let padding = String::from_utf8(map.config_map[PADDING_FILE].body.to_vec()).unwrap();
        assert!(saphyr::Yaml::load_from_str(&padding).is_ok());
        // Keys are unique, values are the agent's own.
        let b = dressed(Shape::REALISTIC, 8).full_report();
        let d = full.agent_description.unwrap();
        let keys: std::collections::HashSet<_> = d
            .non_identifying_attributes
            .iter()
            .map(|k| &k.key)
            .collect();
        assert_eq!(keys.len(), d.non_identifying_attributes.len());
        let pod = |d: &flotilla_proto::opamp::AgentDescription| {
            d.non_identifying_attributes
                .iter()
                .find(|k| k.key == "k8s.pod.uid")
                .cloned()
        };
        assert_ne!(pod(&d), pod(b.agent_description.as_ref().unwrap()));
    }

    #[test]
    fn sizes_follow_the_shape_and_heartbeats_stay_small() {
        for (attrs, comps, bytes) in [(4, 1, 3_000), (40, 7, 50_000), (25, 100, 100_000)] {
            let shape = Shape {
                attributes: attrs,
                components: comps,
                effective_config_bytes: bytes,
            };
            let mut a = dressed(shape, 3);
            let full = a.full_report();
            // 4 attributes are there anyway (service.name, its instance id, host.name, os.type).
            assert_eq!(attributes(&full), attrs.max(4), "{shape:?}");
            assert_eq!(count_components(full.health.as_ref().unwrap()), comps);
            let size = config_bytes(&full.effective_config.unwrap().config_map.unwrap());
            let off = (size as f64 - bytes as f64).abs() / bytes as f64;
            assert!(off <= 0.05, "{size} bytes for {bytes}");
            use prost::Message;
            assert!(
                a.heartbeat().encoded_len() < 40,
                "a heartbeat is the header"
            );
        }
        // Nothing asked: as today.
        let mut plain = dressed(Shape::default(), 1);
        let full = plain.full_report();
        assert_eq!(attributes(&full), 4);
        assert_eq!(count_components(full.health.as_ref().unwrap()), 6);
        assert!(full.effective_config.is_none());
    }

    #[test]
    fn after_a_push_the_effective_config_is_the_pushed_files_plus_the_padding() {
        let mut a = dressed(Shape::REALISTIC, 1);
        let pushed = "receivers: {otlp: {}}\n";
        let reply = ServerToAgent {
            remote_config: Some(AgentRemoteConfig {
                config: Some(AgentConfigMap {
                    config_map: HashMap::from([(
                        "collector.yaml".into(),
                        yaml_file(pushed.into()),
                    )]),
                }),
                config_hash: vec![1],
            }),
            ..Default::default()
        };
        let out = a.handle(&reply);
        let map = out[0].effective_config.clone().unwrap().config_map.unwrap();
        assert_eq!(map.config_map["collector.yaml"].body, pushed.as_bytes());
        let padding = Dress::new(Shape::REALISTIC).padding.unwrap();
        assert_eq!(map.config_map[PADDING_FILE], *padding);
        assert_eq!(map.config_map.len(), 2);
    }
}
