//! The store's connection to the Redis primary: either one address, kept by redis's
//! `ConnectionManager`, or found through Redis Sentinel, and found again after a failover.
//!
//! A Sentinel-found connection is dropped when a command fails in a way that says the primary is
//! gone or has changed (an I/O error, a timeout; or a reply of `READONLY` from a demoted primary
//! or `MASTERDOWN`, which redis hands back as values inside an `Ok`); the next command asks the
//! Sentinels for the primary again. The failed command is not retried here: callers see the
//! error, as they do when a direct connection drops.

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult,
    Value,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long connecting to, and one answer from, a Redis server may take.
const TIMEOUT: Duration = Duration::from_secs(2);
/// How long asking the Sentinels for the primary may take.
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(5);

fn timed_out(what: &'static str) -> RedisError {
    RedisError::from((redis::ErrorKind::Io, what))
}

#[derive(Clone)]
pub enum Conn {
    Direct(ConnectionManager),
    Sentinel(Arc<Primary>),
}

/// The primary of a Sentinel-managed Redis, as last found.
pub struct Primary {
    sentinels: tokio::sync::Mutex<SentinelClient>,
    /// The connection in use and its generation (so that a failure only drops the connection
    /// it happened on, not a newer one another task made meanwhile).
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    generation: std::sync::atomic::AtomicU64,
}

/// A `redis+sentinel://` URL, taken apart.
#[derive(Debug, PartialEq)]
pub struct SentinelUrl {
    /// `redis://[user:password@]host:port` of each Sentinel.
    pub sentinels: Vec<String>,
    /// The name the Sentinels monitor the primary under.
    pub master: String,
    /// `user:password` for the primary and the Sentinels alike, as written in the URL.
    pub userinfo: Option<String>,
}

/// Parses `redis+sentinel://[user:password@]host:port[,host:port...]/<master-name>`. The
/// credentials are given to the Sentinels and to the primary (Redis's own deployments give both
/// one password: `requirepass` on each, `sentinel auth-pass` for the primary).
pub fn parse_sentinel_url(url: &str) -> Result<SentinelUrl, String> {
    let rest = url
        .strip_prefix("redis+sentinel://")
        .ok_or("a Sentinel URL starts with redis+sentinel://")?;
    let (authority, master) = rest
        .split_once('/')
        .ok_or("a Sentinel URL ends with /<master-name>")?;
    if master.is_empty() || master.contains(['/', '?', '#']) {
        return Err(format!(
            "the master name after the last / must be one plain name, not {master:?}"
        ));
    }
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((user, hosts)) => (Some(user.to_owned()), hosts),
        None => (None, authority),
    };
    let mut sentinels = Vec::new();
    for host in hosts.split(',') {
        let (name, port) = host
            .rsplit_once(':')
            .ok_or_else(|| format!("Sentinel address {host:?} needs host:port"))?;
        if name.is_empty() || port.parse::<u16>().is_err() {
            return Err(format!("Sentinel address {host:?} needs host:port"));
        }
        let auth = userinfo.as_ref().map_or(String::new(), |u| format!("{u}@"));
        sentinels.push(format!("redis://{auth}{host}"));
    }
    Ok(SentinelUrl {
        sentinels,
        master: master.to_owned(),
        userinfo,
    })
}

impl Conn {
    /// A connection to `client`'s one address, re-established by redis after it drops.
    pub async fn direct(client: redis::Client) -> RedisResult<Self> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_max_delay(Duration::from_secs(1))
            .set_number_of_retries(2);
        Ok(Self::Direct(
            client.get_connection_manager_with_config(config).await?,
        ))
    }

    /// A connection to the primary the Sentinels of `url` name; connects at once, so that a
    /// wrong URL or a missing primary is reported at start.
    pub async fn sentinel(url: &SentinelUrl) -> RedisResult<Self> {
        let mut node = SentinelNodeConnectionInfo::default();
        if let Some(userinfo) = &url.userinfo {
            // redis reads (and percent-decodes) the credentials of an ordinary URL.
            let info = format!("redis://{userinfo}@localhost/").into_connection_info()?;
            node = node.set_redis_connection_info(info.redis_settings().clone());
        }
        let client = SentinelClient::build(
            url.sentinels.clone(),
            url.master.clone(),
            Some(node),
            SentinelServerType::Master,
        )?;
        let primary = Arc::new(Primary {
            sentinels: tokio::sync::Mutex::new(client),
            current: Mutex::new(None),
            generation: Default::default(),
        });
        primary.connection().await?;
        Ok(Self::Sentinel(primary))
    }
}

impl Primary {
    fn cached(&self) -> Option<(u64, MultiplexedConnection)> {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    async fn connection(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        if let Some(current) = self.cached() {
            return Ok(current);
        }
        let mut sentinels = self.sentinels.lock().await;
        // Another task may have found the primary while this one waited.
        if let Some(current) = self.cached() {
            return Ok(current);
        }
        // A Sentinel that does not answer (a dropped route) must not hold every store call.
        let client = tokio::time::timeout(SENTINEL_TIMEOUT, sentinels.async_get_client())
            .await
            .map_err(|_| timed_out("no Sentinel named the primary in time"))??;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let generation = 1 + self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            primary = ?client.get_connection_info().addr(),
            "connected to the Redis primary named by Sentinel"
        );
        *self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((generation, conn.clone()));
        Ok((generation, conn))
    }

    /// Drops connection `generation` when `lost` (its reply said the primary is gone or no
    /// longer the primary), unless a newer one replaced it already.
    fn judge(&self, generation: u64, lost: bool) {
        if !lost {
            return;
        }
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if current.as_ref().is_some_and(|(g, _)| *g == generation) {
            tracing::warn!("lost the Redis primary; asking Sentinel again");
            *current = None;
        }
    }
}

/// Whether `e` means the connection no longer reaches a writable primary.
fn primary_lost(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(e.code(), Some("READONLY" | "MASTERDOWN"))
}

/// Whether a reply is a server error saying the primary was demoted or lost its own primary. A
/// script's write on a demoted primary fails inside the script, with READONLY in its details.
fn reply_lost(v: &Value) -> bool {
    match v {
        Value::ServerError(e) => {
            matches!(e.code(), "READONLY" | "MASTERDOWN")
                || e.details().is_some_and(|d| d.contains("READONLY"))
        }
        _ => false,
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Direct(conn) => conn.req_packed_command(cmd),
            Self::Sentinel(primary) => Box::pin(async move {
                let (generation, mut conn) = primary.connection().await?;
                let result = conn.req_packed_command(cmd).await;
                let lost = match &result {
                    Err(e) => primary_lost(e),
                    Ok(v) => reply_lost(v),
                };
                primary.judge(generation, lost);
                result
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Direct(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Sentinel(primary) => Box::pin(async move {
                let (generation, mut conn) = primary.connection().await?;
                let result = conn.req_packed_commands(pipeline, offset, count).await;
                let lost = match &result {
                    Err(e) => primary_lost(e),
                    Ok(replies) => replies.iter().any(reply_lost),
                };
                primary.judge(generation, lost);
                result
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Direct(conn) => conn.get_db(),
            Self::Sentinel(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_are_taken_apart() {
        assert_eq!(
            parse_sentinel_url("redis+sentinel://u:p%40ss@s1:26379,10.0.0.2:26380/mymaster"),
            Ok(SentinelUrl {
                sentinels: vec![
                    "redis://u:p%40ss@s1:26379".into(),
                    "redis://u:p%40ss@10.0.0.2:26380".into()
                ],
                master: "mymaster".into(),
                userinfo: Some("u:p%40ss".into()),
            })
        );
        assert_eq!(
            parse_sentinel_url("redis+sentinel://s1:26379/m")
                .unwrap()
                .userinfo,
            None
        );
    }

    #[test]
    fn a_demoted_primary_is_told_by_its_replies() {
        let reply = |raw: &[u8]| redis::parse_redis_value(raw).unwrap();
        assert!(reply_lost(&reply(
            b"-READONLY You can't write against a read only replica.\r\n"
        )));
        assert!(reply_lost(&reply(
            b"-MASTERDOWN Link with MASTER is down\r\n"
        )));
        assert!(reply_lost(&reply(
            b"-ERR Error running script: READONLY You can't write against a read only replica.\r\n"
        )));
        assert!(!reply_lost(&reply(b"-FENCED shard 3\r\n")));
        assert!(!reply_lost(&reply(b"+OK\r\n")));
    }

    #[test]
    fn bad_sentinel_urls_say_what_is_wrong() {
        for (url, says) in [
            ("redis://s1:26379/m", "starts with redis+sentinel://"),
            ("redis+sentinel://s1:26379", "ends with /<master-name>"),
            ("redis+sentinel://s1:26379/", "one plain name"),
            ("redis+sentinel://s1:26379/m/0", "one plain name"),
            ("redis+sentinel://s1/m", "needs host:port"),
            ("redis+sentinel://s1:26379,s2:x/m", "needs host:port"),
            ("redis+sentinel://s1:26379,/m", "needs host:port"),
        ] {
            let err = parse_sentinel_url(url).unwrap_err();
            assert!(err.contains(says), "{url}: {err}");
        }
    }
}
