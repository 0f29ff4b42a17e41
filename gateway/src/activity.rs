//! What a connection's bytes say about it, for the limits on slow, idle and greedy clients: every
//! byte read passes through [`ActivityIo`], which notes when a message (an HTTP request or a
//! WebSocket message) began to arrive, how many of its bytes are in, and when the connection last
//! read anything. The session marks a message complete with [`Activity::settled`];
//! [`Activity::expired`] then tells when a message has taken too long to arrive (a client holding
//! a half-sent frame and its buffer) or the connection has been idle too long. The bytes of
//! messages not yet complete, over every connection, are held under one budget ([`Inflight`]): a
//! read that would pass it fails, and that connection is closed.

use prometheus_client::metrics::counter::Counter;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Why a connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// A message began to arrive and was not complete within the message timeout.
    SlowMessage,
    /// Nothing arrived for the idle timeout.
    Idle,
}

/// The bytes of incomplete messages held by all connections at once, and their ceiling.
#[derive(Debug)]
pub(crate) struct Inflight {
    bytes: AtomicU64,
    max: u64,
    /// Counts reads refused for the budget.
    refused: Counter,
}

impl Inflight {
    #[cfg(test)]
    pub fn new(max: u64) -> Arc<Self> {
        Self::counting(max, Counter::default())
    }

    /// A budget that counts its refusals in `refused`.
    pub fn counting(max: u64, refused: Counter) -> Arc<Self> {
        Arc::new(Self {
            bytes: AtomicU64::new(0),
            max,
            refused,
        })
    }

    /// Bytes held now.
    #[cfg(test)]
    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn take(&self, n: u64) -> bool {
        let before = self.bytes.fetch_add(n, Ordering::AcqRel);
        if before.saturating_add(n) > self.max {
            self.bytes.fetch_sub(n, Ordering::AcqRel);
            self.refused.inc();
            return false;
        }
        true
    }

    fn give_back(&self, n: u64) {
        self.bytes.fetch_sub(n, Ordering::AcqRel);
    }
}

#[derive(Debug)]
pub(crate) struct Activity {
    base: Instant,
    /// Milliseconds after `base` (plus one; 0: none) at which the first byte of a message not yet
    /// complete arrived.
    pending_since: AtomicU64,
    /// Milliseconds after `base` at which the connection last read a byte or settled a message.
    last_active: AtomicU64,
    /// How long the connection may stay idle between messages, in milliseconds (u64::MAX: no
    /// limit).
    idle_ms: AtomicU64,
    message_timeout: Duration,
    /// Bytes of the message not yet complete, held under `inflight`.
    pending_bytes: AtomicU64,
    inflight: Arc<Inflight>,
    /// Wakes [`Activity::expired`] when a message starts to arrive.
    started: Notify,
}

impl Activity {
    pub fn new(
        message_timeout: Duration,
        idle: Option<Duration>,
        inflight: Arc<Inflight>,
    ) -> Arc<Self> {
        let a = Arc::new(Self {
            base: Instant::now(),
            pending_since: AtomicU64::new(0),
            last_active: AtomicU64::new(0),
            idle_ms: AtomicU64::new(u64::MAX),
            message_timeout,
            pending_bytes: AtomicU64::new(0),
            inflight,
            started: Notify::new(),
        });
        a.set_idle(idle);
        a
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms)
    }

    /// Notes `n` bytes read; false when they do not fit the in-flight budget.
    fn read(&self, n: u64) -> bool {
        if !self.inflight.take(n) {
            return false;
        }
        self.pending_bytes.fetch_add(n, Ordering::AcqRel);
        let now = self.now_ms();
        // Only the first byte of a message starts its clock.
        if self
            .pending_since
            .compare_exchange(0, now + 1, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            self.started.notify_one();
        }
        self.last_active.store(now, Ordering::Release);
        true
    }

    /// A message is complete (a request's head or body, a WebSocket message): its bytes leave the
    /// in-flight budget, and the next byte starts the next message's clock.
    pub fn settled(&self) {
        self.inflight
            .give_back(self.pending_bytes.swap(0, Ordering::AcqRel));
        self.pending_since.store(0, Ordering::Release);
        self.last_active.store(self.now_ms(), Ordering::Release);
    }

    /// How long the connection may idle between messages from now on (None: for ever).
    pub fn set_idle(&self, idle: Option<Duration>) {
        let ms = idle.map_or(u64::MAX, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
        });
        self.idle_ms.store(ms, Ordering::Release);
    }

    /// Resolves when the connection has broken a limit: a message pending for longer than the
    /// message timeout, or no activity for the idle time.
    pub async fn expired(&self) -> Expiry {
        loop {
            let pending = self.pending_since.load(Ordering::Acquire);
            let idle = self.idle_ms.load(Ordering::Acquire);
            let deadline = if pending != 0 {
                Some(self.at(pending - 1) + self.message_timeout)
            } else if idle == u64::MAX {
                None
            } else {
                Some(
                    self.at(self
                        .last_active
                        .load(Ordering::Acquire)
                        .saturating_add(idle)),
                )
            };
            // Between messages, a message starting wakes this up to time it.
            let until = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = until => {}
                () = self.started.notified(), if pending == 0 => continue,
            }
            let now = Instant::now();
            let pending = self.pending_since.load(Ordering::Acquire);
            if pending != 0 {
                if now >= self.at(pending - 1) + self.message_timeout {
                    return Expiry::SlowMessage;
                }
                continue;
            }
            let idle = self.idle_ms.load(Ordering::Acquire);
            let last = self.last_active.load(Ordering::Acquire);
            if idle != u64::MAX && now >= self.at(last.saturating_add(idle)) {
                return Expiry::Idle;
            }
        }
    }
}

/// An I/O stream whose reads are noted in an [`Activity`].
pub(crate) struct ActivityIo<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I> ActivityIo<I> {
    pub fn new(io: I, activity: Arc<Activity>) -> Self {
        Self { io, activity }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ActivityIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before) as u64;
        if matches!(polled, Poll::Ready(Ok(()))) && n > 0 && !self.activity.read(n) {
            return Poll::Ready(Err(std::io::Error::other(
                "the gateway holds as many incomplete agent messages as it may",
            )));
        }
        polled
    }
}

impl<I> Drop for ActivityIo<I> {
    fn drop(&mut self) {
        // The connection is gone: whatever it had begun to send leaves the budget.
        self.activity.settled();
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ActivityIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_message_that_stops_halfway_expires_and_an_idle_connection_too() {
        let activity = Activity::new(
            Duration::from_secs(10),
            Some(Duration::from_secs(60)),
            Inflight::new(1 << 20),
        );
        let (client, server) = tokio::io::duplex(64);
        let mut server = ActivityIo::new(server, activity.clone());
        let mut client = client;
        client.write_all(b"half a message").await.unwrap();
        let mut buf = [0u8; 14];
        server.read_exact(&mut buf).await.unwrap();
        let started = Instant::now();
        assert_eq!(activity.expired().await, Expiry::SlowMessage);
        assert_eq!(started.elapsed(), Duration::from_secs(10));

        // Settled: the idle clock runs instead, from the settling.
        activity.settled();
        let started = Instant::now();
        assert_eq!(activity.expired().await, Expiry::Idle);
        assert_eq!(started.elapsed(), Duration::from_secs(60));

        // No idle limit: only a pending message expires.
        activity.set_idle(None);
        let waiting = tokio::spawn({
            let a = activity.clone();
            async move { a.expired().await }
        });
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!waiting.is_finished());
        client.write_all(b"x").await.unwrap();
        server.read_exact(&mut buf[..1]).await.unwrap();
        assert_eq!(waiting.await.unwrap(), Expiry::SlowMessage);
    }

    #[tokio::test]
    async fn incomplete_messages_share_one_budget() {
        let inflight = Inflight::new(100);
        let io = |a: &Arc<Activity>| {
            let (client, server) = tokio::io::duplex(256);
            (client, ActivityIo::new(server, a.clone()))
        };
        let (a, b) = (
            Activity::new(Duration::from_secs(10), None, inflight.clone()),
            Activity::new(Duration::from_secs(10), None, inflight.clone()),
        );
        let (mut ca, mut sa) = io(&a);
        let (mut cb, mut sb) = io(&b);
        let mut buf = [0u8; 256];
        ca.write_all(&[1; 60]).await.unwrap();
        assert_eq!(sa.read(&mut buf).await.unwrap(), 60);
        cb.write_all(&[1; 60]).await.unwrap();
        let err = sb.read(&mut buf).await.unwrap_err();
        assert!(
            err.to_string().contains("incomplete agent messages"),
            "{err}"
        );
        assert_eq!(inflight.bytes(), 60);
        // A completed message gives its bytes back; a dropped connection too.
        a.settled();
        assert_eq!(inflight.bytes(), 0);
        cb.write_all(&[1; 60]).await.unwrap();
        assert_eq!(sb.read(&mut buf).await.unwrap(), 60);
        drop(sb);
        assert_eq!(inflight.bytes(), 0);
    }
}
