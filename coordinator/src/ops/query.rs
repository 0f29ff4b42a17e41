//! What the list queries (agents, audit) share: how many items one answer may hold.

use super::Result;
use super::error::bad_request;

/// The most items one answer holds.
pub const MAX_LIMIT: usize = 1000;

/// A `limit` parameter: a number from 1 to [`MAX_LIMIT`].
pub fn parse_limit(value: &str) -> Result<usize> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| {
            bad_request(format!(
                "limit must be a number from 1 to {MAX_LIMIT}, not {value:?}"
            ))
        })
}
