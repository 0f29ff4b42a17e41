//! Times as the API shows them.

use std::time::{Duration, UNIX_EPOCH};

/// A time as RFC 3339 with milliseconds (the epoch itself for a time that cannot be shown).
pub fn rfc3339(unix_ms: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(unix_ms);
    let mut out = String::new();
    match std::fmt::Write::write_fmt(
        &mut out,
        format_args!("{}", humantime::format_rfc3339_millis(t)),
    ) {
        Ok(()) => out,
        // Past the year 9999: not a time anything here produces, but reported values could be.
        Err(_) => "9999-12-31T23:59:59.999Z".to_owned(),
    }
}
