//! The one error type of the operations. Each interface maps it once: REST to the HTTP status of
//! its [`ErrorKind`], gRPC to a status code (in the gRPC adapter, the only code that speaks gRPC).

use flotilla_common::error::ErrorKind;
use flotilla_common::store::StoreError;
use thiserror::Error;

/// Why an operation did not happen; the message is meant for the caller.
#[derive(Debug, Error)]
pub enum Error {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::BadRequest(_) => ErrorKind::BadRequest,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Conflict(_) => ErrorKind::Conflict,
            Self::Unavailable(_) => ErrorKind::Unavailable,
            // A store that cannot be reached or written (Redis down, a full disk) is a condition
            // to retry; data the store cannot read back is a fault.
            Self::Store(StoreError::Io(_) | StoreError::Fenced { .. }) => ErrorKind::Unavailable,
            Self::Store(StoreError::Corrupt(_)) => ErrorKind::Internal,
        }
    }
}

pub(crate) fn bad_request(msg: impl Into<String>) -> Error {
    Error::BadRequest(msg.into())
}
