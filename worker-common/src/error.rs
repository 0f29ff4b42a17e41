//! The one mapping from an error's kind to what each interface says: HTTP status, WebSocket close
//! code, and OpAMP ServerErrorResponse type. Subsystem error enums say which kind they are.

use flotilla_proto::opamp::ServerErrorResponseType;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    NotFound,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    Unavailable,
    Internal,
}

impl ErrorKind {
    pub fn http_status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::NotFound => 404,
            Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::Unavailable => 503,
            Self::Internal => 500,
        }
    }

    /// RFC 6455 close code for a WebSocket session ended by this error.
    pub fn ws_close_code(self) -> u16 {
        match self {
            Self::PayloadTooLarge => 1009,
            Self::Unavailable => 1013,
            Self::Internal => 1011,
            _ => 1008,
        }
    }

    pub fn opamp_error_type(self) -> ServerErrorResponseType {
        match self {
            Self::Unavailable => ServerErrorResponseType::Unavailable,
            Self::Internal => ServerErrorResponseType::Unknown,
            _ => ServerErrorResponseType::BadRequest,
        }
    }
}

/// A ServerToAgent carrying only `error_response` (the spec forbids other fields beside it), with
/// the agent's uid echoed and, for UNAVAILABLE, how long to wait.
pub fn opamp_error(
    instance_uid: Vec<u8>,
    kind: ErrorKind,
    message: String,
    retry_after: Option<std::time::Duration>,
) -> flotilla_proto::opamp::ServerToAgent {
    use flotilla_proto::opamp::{
        RetryInfo, ServerErrorResponse, ServerToAgent, server_error_response::Details,
    };
    ServerToAgent {
        instance_uid,
        error_response: Some(ServerErrorResponse {
            r#type: kind.opamp_error_type() as i32,
            error_message: message,
            details: retry_after.map(|d| {
                Details::RetryInfo(RetryInfo {
                    retry_after_nanoseconds: u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
                })
            }),
        }),
        ..Default::default()
    }
}

/// [`opamp_error`], encoded.
pub fn opamp_error_reply(
    instance_uid: Vec<u8>,
    kind: ErrorKind,
    message: String,
    retry_after: Option<std::time::Duration>,
) -> Vec<u8> {
    use prost::Message;
    opamp_error(instance_uid, kind, message, retry_after).encode_to_vec()
}
