//! Who asks for an operation: a name for the audit log and a role. The interfaces authenticate
//! the caller and check the role an operation needs before calling it (api::auth).

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

/// The authenticated caller of an operation.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

impl Caller {
    /// The caller when the API runs without tokens (a laptop, a test).
    pub fn anonymous() -> Self {
        Self {
            name: "anonymous".into(),
            role: Role::Admin,
        }
    }

    /// Flotilla itself, for what it does on its own (rollout steps, agent retention).
    pub fn system() -> Self {
        Self {
            name: SYSTEM.into(),
            role: Role::Admin,
        }
    }
}

/// The name the audit log gives Flotilla's own changes.
pub const SYSTEM: &str = "flotilla";
