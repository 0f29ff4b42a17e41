//! Generated protobuf types: the OpAMP messages (`opamp`, written from the specification with its
//! exact field numbers), Flotilla's bus envelopes and agent record (`bus`), and the admin gRPC
//! service (`admin`). Nothing but generated code and a few constants lives here; this crate
//! depends on no other Flotilla crate.

/// Modules nested as the proto packages are, so cross-package references in generated code resolve.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
mod generated {
    pub mod opamp {
        pub mod proto {
            include!(concat!(env!("OUT_DIR"), "/opamp.proto.rs"));
        }
    }
    pub mod flotilla {
        pub mod bus {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/flotilla.bus.v1.rs"));
            }
        }
        pub mod admin {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/flotilla.admin.v1.rs"));
            }
        }
    }
}

pub use generated::flotilla::admin::v1 as admin;
pub use generated::flotilla::bus::v1 as bus;
pub use generated::opamp::proto as opamp;

#[cfg(test)]
mod tests {
    use super::opamp::*;
    use prost::Message;

    /// Field numbers are the wire contract: encode a message by hand with known tags and check
    /// that the generated decoder puts every value where the specification says.
    #[test]
    fn agent_to_server_field_numbers_match_the_spec() {
        let msg = AgentToServer {
            instance_uid: vec![1; 16],
            sequence_num: 7,
            capabilities: 0x1001,
            flags: 1,
            agent_disconnect: Some(AgentDisconnect {}),
            ..Default::default()
        };
        let bytes = msg.encode_to_vec();
        // tag = field_number << 3 | wire_type
        assert_eq!(bytes[0], (1 << 3) | 2, "instance_uid is field 1, bytes");
        assert!(
            bytes.windows(2).any(|w| w == [(2 << 3), 7]),
            "sequence_num is field 2"
        );
        assert!(
            bytes.windows(2).any(|w| w == [(9 << 3) | 2, 0]),
            "agent_disconnect is field 9"
        );
        assert!(
            bytes.windows(2).any(|w| w == [(10 << 3), 1]),
            "flags is field 10"
        );
    }

    #[test]
    fn server_to_agent_field_numbers_match_the_spec() {
        let msg = ServerToAgent {
            capabilities: 0x7f,
            flags: 1,
            ..Default::default()
        };
        assert_eq!(msg.encode_to_vec(), vec![6 << 3, 1, 7 << 3, 0x7f]);
        let cmd = ServerToAgent {
            command: Some(ServerToAgentCommand {
                r#type: CommandType::Restart as i32,
            }),
            ..Default::default()
        };
        assert_eq!(cmd.encode_to_vec(), vec![(9 << 3) | 2, 0]);
    }

    #[test]
    fn capability_bits_match_the_spec() {
        assert_eq!(AgentCapabilities::ReportsStatus as u64, 0x1);
        assert_eq!(AgentCapabilities::AcceptsRestartCommand as u64, 0x400);
        assert_eq!(AgentCapabilities::ReportsHeartbeat as u64, 0x2000);
        assert_eq!(
            AgentCapabilities::ReportsConnectionSettingsStatus as u64,
            0x8000
        );
        assert_eq!(
            ServerCapabilities::AcceptsConnectionSettingsRequest as u64,
            0x40
        );
        assert_eq!(ServerToAgentFlags::ReportFullState as u64, 0x1);
        assert_eq!(RemoteConfigStatuses::Failed as i32, 3);
        assert_eq!(PackageStatusEnum::Downloading as i32, 4);
    }
}
