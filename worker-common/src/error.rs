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
