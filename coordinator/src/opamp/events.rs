//! What happens to agents, as the state machine reports it and the service publishes it.

/// Something that happened to an agent, published on `opamp.<region>.evt.<kind>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Connected,
    Disconnected,
    Silent,
    Unhealthy,
    /// Reports healthy again after reporting unhealthy.
    Healthy,
    ConfigApplied,
    ConfigFailed,
    /// Reports its previous config applied right after failing a new one: it went back.
    ConfigRolledBack,
}

impl EventKind {
    pub const ALL: [EventKind; 8] = [
        Self::Connected,
        Self::Disconnected,
        Self::Silent,
        Self::Unhealthy,
        Self::Healthy,
        Self::ConfigApplied,
        Self::ConfigFailed,
        Self::ConfigRolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Disconnected => "disconnected",
            Self::Silent => "silent",
            Self::Unhealthy => "unhealthy",
            Self::Healthy => "healthy",
            Self::ConfigApplied => "config_applied",
            Self::ConfigFailed => "config_failed",
            Self::ConfigRolledBack => "config_rolled_back",
        }
    }
}
