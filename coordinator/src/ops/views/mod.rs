//! What the operations answer: typed views of agents, configs, rollouts and audit entries. Their
//! serde form is the REST API's JSON (field names are the contract in ARCHITECTURE.md); the gRPC
//! adapter and the console read the same structs.
//!
//! One file per kind of object; this file only gathers them. Views are built from what the store
//! holds, with the fleet rules (what an agent is due, redaction); they do no I/O and use no other
//! operation.

mod agents;
mod audit;
mod configs;
mod overview;
mod rollouts;
mod time;

pub use agents::*;
pub use audit::*;
pub use configs::*;
pub use overview::*;
pub use rollouts::*;
pub use time::rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_past_what_can_be_shown_do_not_panic() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn config_state_follows_the_reported_hash_and_status() {
        use flotilla_proto::bus::AgentRecord;
        use flotilla_proto::opamp::{RemoteConfigStatus, RemoteConfigStatuses as S};
        let want = hex::encode([0xab; 32]);
        let rec = |hash: Vec<u8>, status: S| AgentRecord {
            remote_config_status: Some(RemoteConfigStatus {
                last_remote_config_hash: hash,
                status: status as i32,
                error_message: String::new(),
            }),
            ..Default::default()
        };
        assert_eq!(
            config_state(&rec(vec![0xab; 32], S::Applied), Some(&want)),
            "applied"
        );
        assert_eq!(
            config_state(&rec(vec![0xab; 32], S::Failed), Some(&want)),
            "failed"
        );
        assert_eq!(
            config_state(&rec(vec![0xab; 32], S::Applying), Some(&want)),
            "applying"
        );
        assert_eq!(
            config_state(&rec(vec![0xac; 32], S::Applied), Some(&want)),
            "pending"
        );
        assert_eq!(
            config_state(&rec(vec![0xab; 31], S::Applied), Some(&want)),
            "pending"
        );
        assert_eq!(
            config_state(&AgentRecord::default(), Some(&want)),
            "pending"
        );
        assert_eq!(
            config_state(&rec(vec![0xab; 32], S::Applied), None),
            "unmanaged"
        );
    }

    #[test]
    fn selectors_show_as_pairs_when_they_can() {
        let pairs = SelectorView::of(&"env=prod,region=eu".parse().unwrap());
        assert_eq!(
            serde_json::to_value(pairs).unwrap(),
            serde_json::json!({"env": "prod", "region": "eu"})
        );
        let text = SelectorView::of(&"env in (a,b)".parse().unwrap());
        assert_eq!(
            serde_json::to_value(text).unwrap(),
            serde_json::json!("env in (a,b)")
        );
    }
}
