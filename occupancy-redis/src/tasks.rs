//! The node's background tasks around [`Inner`]: the pub/sub subscriber (messages go to
//! [`Inner::on_message`]), the lease task (renewals, re-reads after a resubscription, expired
//! placeholders), the sweep of a dead node (bounded calls, one after another) and the idle task.
//! Each holds the backend weakly and ends when it is dropped.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tracing::{debug, info, warn};

use crate::backend::{Inner, Signals, unix_ms};

pub(crate) async fn subscriber(
    weak: Weak<Inner>,
    signals: Arc<Signals>,
    client: redis::Client,
    channel: String,
    timeout: Duration,
) {
    let mut backoff = Duration::from_millis(20);
    loop {
        if signals.closed.load(Ordering::Acquire) {
            return;
        }
        let ps = tokio::time::timeout(timeout, async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(ps)
        })
        .await;
        match ps {
            Ok(Ok(ps)) => {
                backoff = Duration::from_millis(20);
                debug!(channel, "subscribed");
                // Messages may have been lost meanwhile: re-read the truth, check the lease.
                signals.poke.notify_one();
                let mut stream = ps.into_on_message();
                loop {
                    let stopped = signals.stop.notified();
                    if signals.closed.load(Ordering::Acquire) {
                        return;
                    }
                    let msg = tokio::select! {
                        m = stream.next() => m,
                        _ = stopped => return,
                    };
                    let Some(msg) = msg else { break };
                    let Some(inner) = weak.upgrade() else { return };
                    inner.on_message(msg.get_payload_bytes());
                }
                warn!(channel, "lost the Redis subscription; reconnecting");
            }
            Ok(Err(e)) => debug!(error = %e, "subscribe failed"),
            Err(_) => debug!("subscribe timed out"),
        }
        let stopped = signals.stop.notified();
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped => return,
        }
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

/// How long after another node's lease ends this node looks at it (so that a renewal made at
/// the last moment is seen).
pub(crate) const LEASE_END_MARGIN: Duration = Duration::from_millis(5);

/// Sweeps a dead node, one bounded script call after another (see `lua::SWEEP`), until the
/// sweep is over. Several nodes may sweep the same dead node at once: every call is atomic and
/// takes what is left. On an error the task ends; the sweep is left in Redis and the next
/// renewal (of any node) starts it again.
pub(crate) async fn sweep_task(weak: Weak<Inner>, signals: Arc<Signals>, dead: String) {
    let started = Instant::now();
    let (mut calls, mut sessions) = (0u64, 0u64);
    loop {
        if signals.closed.load(Ordering::Acquire) {
            return;
        }
        let Some(inner) = weak.upgrade() else { return };
        let r = inner.sweep_step(&dead).await;
        calls += 1;
        let done = match r {
            Ok((more, n)) => {
                sessions += n;
                !more
            }
            Err(e) => {
                warn!(node = %dead, error = %e, "sweeping a dead node failed; the next renewal carries on");
                true
            }
        };
        if done {
            inner
                .sweeping
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&dead);
            if sessions > 0 {
                info!(node = %dead, sessions, calls, elapsed = ?started.elapsed(), "swept the sessions of a node whose lease ended");
            }
            return;
        }
        drop(inner);
        // Let this node's other work run between two calls (Redis serves the other clients
        // between them anyway).
        tokio::task::yield_now().await;
    }
}

pub(crate) async fn lease_task(weak: Weak<Inner>, signals: Arc<Signals>) {
    let mut resync = true;
    loop {
        let stopped = signals.stop.notified();
        let poked = signals.poke.notified();
        if signals.closed.load(Ordering::Acquire) {
            return;
        }
        let Some(inner) = weak.upgrade() else { return };
        let period = (inner.cfg.lease / 3).max(Duration::from_millis(30));
        let r = async {
            inner.recover_now().await?;
            if resync {
                inner.resync().await?;
            }
            inner.prune_due().await
        }
        .await;
        let recheck = match inner.recheck_at.load(Ordering::Relaxed) {
            0 => period,
            at => Duration::from_millis(at.saturating_sub(unix_ms())),
        };
        drop(inner);
        let wait = match r {
            Ok(()) => {
                resync = false;
                // Not more often than every 20 ms however the leases fall.
                period.min(recheck).max(Duration::from_millis(20))
            }
            Err(e) => {
                debug!(error = %e, "lease renewal failed; retrying");
                resync = true;
                Duration::from_millis(100).min(period)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = poked => resync = true,
            _ = stopped => return,
        }
    }
}

/// Fires the idle deadlines of the rooms whose holder this node hosts ([`Inner::fire_idle`]).
pub(crate) async fn idle_task(weak: Weak<Inner>, signals: Arc<Signals>) {
    loop {
        let stopped = signals.stop.notified();
        let poked = signals.idle.notified();
        if signals.closed.load(Ordering::Acquire) {
            return;
        }
        let next = {
            let Some(inner) = weak.upgrade() else { return };
            inner.fire_idle().await
        };
        match next {
            Some(at) => tokio::select! {
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                _ = poked => {}
                _ = stopped => return,
            },
            None => tokio::select! {
                _ = poked => {}
                _ = stopped => return,
            },
        }
    }
}
