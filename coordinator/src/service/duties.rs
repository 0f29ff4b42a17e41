//! The coordinator's background duties (silence sweep, rollout driver, gauges, config re-reads,
//! agent retention) under one supervisor: each runs on its own period, each run in its own task,
//! so a run that fails or panics is logged, counted in `flotilla_coordinator_duty_failures`, and
//! followed by the next run instead of ending the duty for good. A duty that has failed
//! [`FAILING_AFTER`] runs in a row makes [`DutyHealth::check`] (and so `/readyz`) fail until it
//! succeeds again.

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info_span, warn};

/// Failed runs in a row after which a duty counts as failing for `/readyz`.
pub const FAILING_AFTER: u32 = 3;

type Labels = Vec<(&'static str, &'static str)>;

/// One duty's record of consecutive failures.
#[derive(Debug)]
struct DutyState {
    name: &'static str,
    failures_in_a_row: AtomicU32,
}

/// Whether every duty is running well.
#[derive(Debug, Clone, Default)]
pub struct DutyHealth(Arc<Mutex<Vec<Arc<DutyState>>>>);

impl DutyHealth {
    /// Err names the duties that keep failing.
    pub fn check(&self) -> Result<(), String> {
        let states = self.0.lock();
        let failing: Vec<String> = states
            .iter()
            .filter(|d| d.failures_in_a_row.load(Ordering::Relaxed) >= FAILING_AFTER)
            .map(|d| {
                format!(
                    "{} ({} failures in a row)",
                    d.name,
                    d.failures_in_a_row.load(Ordering::Relaxed)
                )
            })
            .collect();
        if failing.is_empty() {
            Ok(())
        } else {
            Err(format!("background duties failing: {}", failing.join(", ")))
        }
    }

    fn register(&self, name: &'static str) -> Arc<DutyState> {
        let state = Arc::new(DutyState {
            name,
            failures_in_a_row: AtomicU32::new(0),
        });
        self.0.lock().push(state.clone());
        state
    }
}

/// Runs `run` every `every` (and at once when `wake` is notified) until `cancel`. A run that
/// returns Err or panics counts as a failure; the next run comes at the next period regardless.
pub async fn supervise<F>(
    name: &'static str,
    every: Duration,
    wake: Option<Arc<Notify>>,
    health: DutyHealth,
    failures: Family<Labels, Counter>,
    cancel: CancellationToken,
    run: F,
) where
    F: Fn() -> BoxFuture<'static, Result<(), String>>,
{
    let state = health.register(name);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = async {
                match &wake {
                    Some(w) => w.notified().await,
                    None => std::future::pending().await,
                }
            } => {}
            () = cancel.cancelled() => break,
        }
        // Its own task: a panic ends that run only, and is seen here as a failed join.
        let outcome = tokio::spawn(run().instrument(info_span!("duty", name))).await;
        let why = match outcome {
            Ok(Ok(())) => {
                state.failures_in_a_row.store(0, Ordering::Relaxed);
                continue;
            }
            Ok(Err(why)) => why,
            Err(join) if join.is_panic() => format!("panicked: {}", panic_text(join)),
            Err(_) => "cancelled".to_owned(),
        };
        failures.get_or_create(&vec![("duty", name)]).inc();
        let n = state.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= FAILING_AFTER {
            error!(duty = name, failures_in_a_row = n, error = %why, "background duty keeps failing");
        } else {
            warn!(duty = name, error = %why, "background duty failed; it runs again next period");
        }
    }
}

fn panic_text(join: tokio::task::JoinError) -> String {
    let payload = join.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_duty_is_counted_reported_and_run_again() {
        let health = DutyHealth::default();
        let failures: Family<Labels, Counter> = Family::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let cancel = CancellationToken::new();
        let r = runs.clone();
        let task = tokio::spawn(supervise(
            "flaky",
            Duration::from_secs(1),
            None,
            health.clone(),
            failures.clone(),
            cancel.clone(),
            move || {
                let n = r.fetch_add(1, Ordering::SeqCst);
                async move {
                    match n {
                        0..=3 => panic!("run {n} overflowed"),
                        4 => Err("store unreachable".to_owned()),
                        _ => Ok(()),
                    }
                }
                .boxed()
            },
        ));
        // Four panics in a row: failing.
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        let err = health.check().unwrap_err();
        assert!(err.contains("flaky (4 failures in a row)"), "{err}");
        // An error, then successes: healthy again, every failure counted.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(runs.load(Ordering::SeqCst) >= 6);
        assert!(health.check().is_ok());
        assert_eq!(failures.get_or_create(&vec![("duty", "flaky")]).get(), 5);
        cancel.cancel();
        task.await.unwrap();
    }
}
