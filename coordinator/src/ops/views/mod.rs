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
mod own_metrics;
mod rollouts;
mod time;

pub use agents::*;
pub use audit::*;
pub use configs::*;
pub use overview::*;
pub use own_metrics::*;
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
    fn a_rollback_by_the_agent_is_failed_and_shown_and_silence_is_unknown() {
        use flotilla_proto::bus::AgentRecord;
        use flotilla_proto::opamp::{
            AgentCapabilities as Cap, RemoteConfigStatus, RemoteConfigStatuses as S,
        };
        let want = [0xab; 32];
        let rolled_back = AgentRecord {
            capabilities: Cap::ReportsRemoteConfig as u64,
            remote_config_status: Some(RemoteConfigStatus {
                last_remote_config_hash: vec![0xcd; 32],
                status: S::Applied as i32,
                error_message: String::new(),
            }),
            rejected_config_hash: want.to_vec(),
            rejected_config_error: "bad exporter".into(),
            ..Default::default()
        };
        assert_eq!(
            config_state(&rolled_back, Some(&hex::encode(want))),
            "failed"
        );
        let view = AgentSummary::of(&rolled_back, &Default::default());
        assert_eq!(
            serde_json::to_value(&view.remote_config_status).unwrap(),
            serde_json::json!({
                "status": "APPLIED",
                "hash": hex::encode([0xcd; 32]),
                "error": "",
                "rolled_back": {"hash": hex::encode(want), "error": "bad exporter"},
            })
        );
        // Still reporting FAILED for it is a failure, not a rollback.
        let mut failing = rolled_back.clone();
        failing
            .remote_config_status
            .as_mut()
            .unwrap()
            .last_remote_config_hash = want.to_vec();
        failing.remote_config_status.as_mut().unwrap().status = S::Failed as i32;
        assert_eq!(config_state(&failing, Some(&hex::encode(want))), "failed");
        let view = AgentSummary::of(&failing, &Default::default());
        assert!(view.remote_config_status.rolled_back.is_none());

        let silent = AgentRecord {
            capabilities: Cap::AcceptsRemoteConfig as u64,
            offered_config_hash: want.to_vec(),
            ..Default::default()
        };
        assert_eq!(config_state(&silent, Some(&hex::encode(want))), "unknown");
        assert_eq!(
            config_state(&silent, Some(&hex::encode([1; 32]))),
            "pending"
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
