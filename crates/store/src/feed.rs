//! The registry change feed: how an instance learns, within about a second, that another
//! instance changed a tenant's registry entry (status, tier, keys), without re-reading every
//! cached tenant every few seconds.
//!
//! A backend shared by several instances (PostgreSQL) stamps every change of a tenant's entry
//! with a revision from one sequence. Each [`Store`](crate::Store) polls for revisions it has
//! not seen and drops those tenants from its cache; the next request re-reads them. While the
//! feed works, cached tenant state may live for `StoreConfig::feed_cache_ttl` (a safety net);
//! while it fails (the database is unreachable), the short `StoreConfig::cache_ttl` applies
//! again.
//!
//! Revisions are taken when a change is made but become visible when it commits, so a change
//! can appear after higher revisions were already seen. The poller therefore re-reads a window
//! of [`LOOKBACK`] revisions behind the highest one seen and remembers which revisions in that
//! window it already handled, so each change invalidates once.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bulkhead_core::TenantId;

use crate::port::{Registry, RegistryChange};

/// The shortest poll interval.
const MIN_INTERVAL: Duration = Duration::from_millis(50);

/// How many revisions behind the highest one seen are read again on each poll.
pub(crate) const LOOKBACK: i64 = 1000;

/// Which changes of a poll are new: the pure part of the poller.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// The highest revision seen.
    high: i64,
    /// Revisions seen within `LOOKBACK` of `high`.
    recent: BTreeSet<i64>,
}

impl Seen {
    pub(crate) fn starting_at(high: i64) -> Self {
        Self {
            high,
            recent: BTreeSet::new(),
        }
    }

    /// Where the next poll starts (exclusive).
    pub(crate) fn from(&self) -> i64 {
        self.high.saturating_sub(LOOKBACK)
    }

    /// The tenants whose changes in `changes` were not handled before.
    pub(crate) fn fresh(&mut self, changes: &[RegistryChange]) -> Vec<TenantId> {
        let mut out = Vec::new();
        for c in changes {
            if c.revision <= self.from() {
                continue;
            }
            if self.recent.insert(c.revision) {
                out.push(c.tenant);
            }
            self.high = self.high.max(c.revision);
        }
        let floor = self.from();
        self.recent = self.recent.split_off(&(floor.saturating_add(1)));
        out
    }
}

/// The poller's state shared with the store.
#[derive(Debug)]
pub(crate) struct FeedHealth {
    started: Instant,
    /// Milliseconds after `started` of the last successful poll (0: none yet).
    last_ok_ms: AtomicU64,
}

impl FeedHealth {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            last_ok_ms: AtomicU64::new(0),
        }
    }

    fn ok(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ok_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// Whether a poll succeeded within `within`.
    pub(crate) fn live(&self, within: Duration) -> bool {
        let last = self.last_ok_ms.load(Ordering::Relaxed);
        if last == 0 {
            return false;
        }
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        now.saturating_sub(last) <= u64::try_from(within.as_millis()).unwrap_or(u64::MAX)
    }
}

/// A running poller; stops when dropped.
#[derive(Debug)]
pub(crate) struct Feed {
    pub(crate) health: Arc<FeedHealth>,
    pub(crate) interval: Duration,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Feed {
    /// Starts polling if the registry has a change feed; `None` if it has none.
    pub(crate) async fn start(
        registry: Arc<dyn Registry>,
        interval: Duration,
        invalidate: impl Fn(TenantId) + Send + Sync + 'static,
    ) -> Result<Option<Self>, crate::BackendError> {
        let Some(high) = registry.registry_revision().await? else {
            return Ok(None);
        };
        // A zero interval would spin (and `tokio::time::interval` refuses it).
        let interval = interval.max(MIN_INTERVAL);
        let health = Arc::new(FeedHealth::new());
        health.ok();
        let task = tokio::spawn(poll(
            registry,
            interval,
            Seen::starting_at(high),
            health.clone(),
            invalidate,
        ));
        Ok(Some(Self {
            health,
            interval,
            task,
        }))
    }

    /// Whether cached tenant state can be trusted to be invalidated by the feed.
    pub(crate) fn live(&self) -> bool {
        self.health.live(self.interval.saturating_mul(3))
    }
}

async fn poll(
    registry: Arc<dyn Registry>,
    interval: Duration,
    mut seen: Seen,
    health: Arc<FeedHealth>,
    invalidate: impl Fn(TenantId) + Send + Sync + 'static,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        match registry.registry_changes(seen.from()).await {
            Ok(Some(changes)) => {
                for tenant in seen.fresh(&changes) {
                    invalidate(tenant);
                }
                health.ok();
                if failing {
                    tracing::info!("registry change feed: polling again");
                    failing = false;
                }
            }
            Ok(None) => return,
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        error = %e,
                        "registry change feed: poll failed; cached tenant state expires after \
                         the short cache_ttl until it works again"
                    );
                    failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(n: u8, revision: i64) -> RegistryChange {
        RegistryChange {
            tenant: TenantId::from_bytes([n; 16]),
            revision,
        }
    }

    #[test]
    fn each_change_invalidates_once_even_when_seen_again() {
        let mut s = Seen::starting_at(10);
        assert_eq!(
            s.fresh(&[change(1, 11), change(2, 12)]),
            vec![TenantId::from_bytes([1; 16]), TenantId::from_bytes([2; 16])]
        );
        // The next poll reads the window again: nothing new.
        assert!(s.fresh(&[change(1, 11), change(2, 12)]).is_empty());
        // A change that committed late, with a lower revision than one already seen.
        assert_eq!(
            s.fresh(&[change(3, 5), change(1, 11), change(2, 12)]),
            vec![TenantId::from_bytes([3; 16])]
        );
        // The same tenant changed again: a new revision, invalidated again.
        assert_eq!(
            s.fresh(&[change(1, 13)]),
            vec![TenantId::from_bytes([1; 16])]
        );
    }

    #[test]
    fn the_window_trails_the_highest_revision() {
        let mut s = Seen::starting_at(0);
        assert_eq!(s.from(), -LOOKBACK);
        let _ = s.fresh(&[change(1, 5000)]);
        assert_eq!(s.from(), 5000 - LOOKBACK);
        // Older than the window: left to the cache's own expiry.
        assert!(s.fresh(&[change(2, 5000 - LOOKBACK)]).is_empty());
        assert_eq!(s.recent.len(), 1);
        let _ = s.fresh(&[change(3, 9000)]);
        assert_eq!(
            s.recent.len(),
            1,
            "revisions behind the window are forgotten"
        );
    }

    #[test]
    fn health_is_live_only_after_a_recent_success() {
        let h = FeedHealth::new();
        assert!(!h.live(Duration::from_secs(3)));
        h.ok();
        assert!(h.live(Duration::from_secs(3)));
    }
}
