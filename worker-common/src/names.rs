//! Shard function, how an instance_uid is written, and the names of bus subjects. One place, so gateway and coordinator agree.

use xxhash_rust::xxh3::xxh3_64;

/// Where gateways take agents' own metrics (OTLP/HTTP), on the OpAMP listener: offers name it.
pub const OWN_METRICS_PATH: &str = "/v1/metrics";

/// The header an agent's own-metrics exports carry when a copy is to be forwarded: the name of a
/// gateway's `--agent-metrics-forward` destination (offered with the destination).
pub const FORWARD_HEADER: &str = "Flotilla-Forward";

/// A name of a forwarding destination (`--agent-metrics-forward NAME=URL`): 1 to 64 letters,
/// digits, '-' or '_'.
pub fn is_forward_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Fixed per deployment: changing it moves every agent to another shard.
pub const SHARD_COUNT: u16 = 1024;

/// The shard of an agent. xxh3 is stable across builds and platforms (the std hasher is not).
pub fn shard_of(instance_uid: &[u8]) -> u16 {
    (xxh3_64(instance_uid) % u64::from(SHARD_COUNT)) as u16
}

/// An instance_uid as its UUID text, or hex when it is not 16 bytes (for logs, errors and
/// headers).
pub fn uid_text(uid: &[u8]) -> String {
    match uuid::Uuid::from_slice(uid) {
        Ok(u) => u.to_string(),
        Err(_) => uid.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

/// The queue group of the coordinators answering [`Subjects::fleet_query`].
pub const FLEET_QUERY_GROUP: &str = "fleet";

/// Subject names within one region.
#[derive(Clone, Debug)]
pub struct Subjects {
    region: String,
}

impl Subjects {
    pub fn new(region: &str) -> Self {
        Self {
            region: region.to_owned(),
        }
    }

    /// gateway -> owner of `shard`, request/reply.
    pub fn uplink(&self, shard: u16) -> String {
        format!("opamp.{}.up.{shard:04}", self.region)
    }

    /// Every shard's uplink subject (a single owner of all shards subscribes to this).
    pub fn uplink_all(&self) -> String {
        format!("opamp.{}.up.*", self.region)
    }

    /// owner -> the gateway holding an agent's connection.
    pub fn downlink(&self, gateway_id: &str) -> String {
        format!("opamp.{}.gw.{gateway_id}.down", self.region)
    }

    /// owner -> the gateway holding many agents' connections: several downlinks in one request
    /// (a config pushed to the fleet).
    pub fn downlink_batch(&self, gateway_id: &str) -> String {
        format!("opamp.{}.gw.{gateway_id}.down.batch", self.region)
    }

    /// gateway -> the coordinator `node_id`: heartbeats the gateway answered under its grants
    /// (request/reply).
    pub fn answered_heartbeats(&self, node_id: &str) -> String {
        format!("opamp.{}.owner.{node_id}.heartbeats", self.region)
    }

    /// A coordinator stored a new config version: the others re-read configs and push.
    pub fn desired_changed(&self) -> String {
        format!("opamp.{}.ctl.desired", self.region)
    }

    /// A coordinator gave a shard up (payload: the shard number): its next owner acquires now.
    pub fn shard_released(&self) -> String {
        format!("opamp.{}.ctl.shard.released", self.region)
    }

    /// Fleet views asked of this region by the others (request/reply, one coordinator of the
    /// region answers: queue group [`FLEET_QUERY_GROUP`]).
    pub fn fleet_query(&self) -> String {
        format!("opamp.{}.ctl.fleet", self.region)
    }

    /// Agent lists asked of every shard owner at once (gather): each answers for the shards it
    /// owns from its copies of their records.
    pub fn owned_lists(&self) -> String {
        format!("opamp.{}.ctl.owned.agents", self.region)
    }

    /// Agent events: connected, disconnected, silent, unhealthy, config_applied, config_failed.
    pub fn event(&self, kind: &str) -> String {
        format!("opamp.{}.evt.{kind}", self.region)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_is_stable_and_in_range() {
        // Pinned values (Python's xxhash gives the same): if these change, every deployed agent
        // changes shard.
        let uid: Vec<u8> = (0u8..16).collect();
        assert_eq!(shard_of(&uid), 219);
        assert_eq!(xxh3_64(b""), 0x2d06_8005_38d3_94c2);
        for i in 0..1000u32 {
            assert!(shard_of(&i.to_le_bytes()) < SHARD_COUNT);
        }
    }

    #[test]
    fn subjects() {
        let s = Subjects::new("eu1");
        assert_eq!(s.uplink(7), "opamp.eu1.up.0007");
        assert_eq!(s.downlink("gw-a"), "opamp.eu1.gw.gw-a.down");
        assert_eq!(s.downlink_batch("gw-a"), "opamp.eu1.gw.gw-a.down.batch");
        assert_eq!(s.event("silent"), "opamp.eu1.evt.silent");
        assert_eq!(s.fleet_query(), "opamp.eu1.ctl.fleet");
    }
}
