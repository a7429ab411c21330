//! This instance's per-tenant limiter state: the GCRA arrival time and interval, the requests
//! in flight and a traffic count (for the metrics' top-K), 24 bytes per tenant (40 with its
//! key) in a sharded map.
//!
//! A tenant's parameters are not stored: every call passes the tenant's current limits, so a
//! changed tier applies to its next request. A tenant idle long enough that its bucket is full
//! and nothing is in flight is indistinguishable from an unknown one, so [`LocalLimiter::sweep`]
//! evicts it without losing anything.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_core::TenantId;
use bulkhead_core::tier::TierLimits;
use parking_lot::Mutex;

use crate::gcra::{self, RateDecision};

/// Shards of the map: enough that 2-64 cores rarely contend on one lock.
const SHARDS: usize = 64;

/// One tenant's state.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// GCRA theoretical arrival time, in nanoseconds on the limiter's clock.
    tat: u64,
    /// The emission interval `tat` was computed with (to carry it over a change of rate).
    interval: u64,
    /// Requests admitted and not yet finished.
    inflight: u32,
    /// Requests seen since the metrics last ranked tenants.
    hits: u32,
}

/// Tenant ids are random UUIDv7 bits chosen by the server (and come from verified tokens):
/// hashing their low 8 bytes is enough and cheap.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
}

type Shard = HashMap<TenantId, Slot, BuildHasherDefault<IdHasher>>;

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    epoch: Instant,
}

/// The limiter of this instance. Cheap to clone.
#[derive(Clone)]
pub struct LocalLimiter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LocalLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLimiter")
            .field("tenants", &self.len())
            .finish_non_exhaustive()
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over the tenant's request rate.
    Rate(RateDecision),
    /// The tenant already has `max_concurrency` requests in flight.
    Concurrency { max: u32 },
}

/// An admitted request: its rate figures and the concurrency permit it holds until dropped.
#[derive(Debug)]
pub struct Admission {
    pub rate: RateDecision,
    pub permit: Permit,
}

/// One of a tenant's concurrency slots; released when dropped.
pub struct Permit {
    inner: Arc<Inner>,
    tenant: TenantId,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("tenant", &self.tenant)
            .finish()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut shard = self.inner.shard(self.tenant).lock();
        if let Some(slot) = shard.get_mut(&self.tenant) {
            slot.inflight = slot.inflight.saturating_sub(1);
        }
    }
}

impl Inner {
    fn shard(&self, t: TenantId) -> &Mutex<Shard> {
        let b = t.as_bytes();
        let i = usize::from(b[15] ^ b[14]) % self.shards.len().max(1);
        // INVARIANT: `i < shards.len()`, and there is at least one shard.
        #[allow(clippy::indexing_slicing, reason = "i is reduced modulo the length")]
        &self.shards[i]
    }
}

impl Default for LocalLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalLimiter {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
                epoch: Instant::now(),
            }),
        }
    }

    /// Now on the limiter's clock.
    pub fn now(&self) -> Duration {
        self.inner.epoch.elapsed()
    }

    /// Admits a request of `tenant` held to `limits` at `now` (from [`LocalLimiter::now`], or a
    /// test's clock), or says why not. A refused request changes no state.
    pub fn admit(
        &self,
        tenant: TenantId,
        limits: &TierLimits,
        now: Duration,
    ) -> Result<Admission, Refusal> {
        let now = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        let mut shard = self.inner.shard(tenant).lock();
        let slot = shard.entry(tenant).or_default();
        slot.hits = slot.hits.saturating_add(1);
        let interval = gcra::interval_nanos(limits.rate_per_second);
        if slot.interval != interval {
            slot.tat = gcra::rescale(slot.tat, now, slot.interval, interval);
            slot.interval = interval;
        }
        let (rate, tat) = gcra::check(slot.tat, now, limits.rate_per_second, limits.burst);
        if !rate.allowed {
            return Err(Refusal::Rate(rate));
        }
        if slot.inflight >= limits.max_concurrency {
            return Err(Refusal::Concurrency {
                max: limits.max_concurrency,
            });
        }
        slot.tat = tat;
        slot.inflight += 1;
        drop(shard);
        Ok(Admission {
            rate,
            permit: Permit {
                inner: self.inner.clone(),
                tenant,
            },
        })
    }

    /// Takes a concurrency slot only (the rate was decided elsewhere, e.g. by Redis).
    pub fn acquire(&self, tenant: TenantId, max_concurrency: u32) -> Result<Permit, Refusal> {
        let mut shard = self.inner.shard(tenant).lock();
        let slot = shard.entry(tenant).or_default();
        slot.hits = slot.hits.saturating_add(1);
        if slot.inflight >= max_concurrency {
            return Err(Refusal::Concurrency {
                max: max_concurrency,
            });
        }
        slot.inflight += 1;
        drop(shard);
        Ok(Permit {
            inner: self.inner.clone(),
            tenant,
        })
    }

    /// Counts a request decided elsewhere (by the shared limiter) for the metrics' ranking.
    pub fn count(&self, tenant: TenantId) {
        let mut shard = self.inner.shard(tenant).lock();
        let slot = shard.entry(tenant).or_default();
        slot.hits = slot.hits.saturating_add(1);
    }

    /// Requests of `tenant` in flight now.
    pub fn inflight(&self, tenant: TenantId) -> u32 {
        self.inner
            .shard(tenant)
            .lock()
            .get(&tenant)
            .map_or(0, |s| s.inflight)
    }

    /// Evicts tenants with nothing in flight whose bucket has been full for `idle` (they are
    /// indistinguishable from unknown tenants). Returns how many were evicted.
    pub fn sweep(&self, now: Duration, idle: Duration) -> usize {
        let cutoff = u64::try_from(now.saturating_sub(idle).as_nanos()).unwrap_or(u64::MAX);
        let mut evicted = 0;
        for shard in self.inner.shards.iter() {
            let mut s = shard.lock();
            let before = s.len();
            s.retain(|_, slot| slot.inflight > 0 || slot.tat > cutoff);
            evicted += before - s.len();
            // Give memory back after a burst of tenants went idle.
            let len = s.len();
            if s.capacity() > 64 && len < s.capacity() / 4 {
                s.shrink_to(len * 2);
            }
        }
        evicted
    }

    /// Tenants known to the limiter now.
    pub fn len(&self) -> usize {
        self.inner.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes held by the per-tenant state (the tables' allocations; each entry costs its
    /// key and slot plus one control byte, in tables at most 7/8 full).
    pub fn memory_bytes(&self) -> usize {
        let entry = std::mem::size_of::<(TenantId, Slot)>() + 1;
        self.inner
            .shards
            .iter()
            .map(|s| s.lock().capacity() * entry)
            .sum::<usize>()
            + std::mem::size_of::<Mutex<Shard>>() * self.inner.shards.len()
    }

    /// The `k` tenants with the most requests since the last call, most first; every count is
    /// reset.
    pub fn take_top(&self, k: usize) -> Vec<(TenantId, u32)> {
        let mut all: Vec<(TenantId, u32)> = Vec::new();
        for shard in self.inner.shards.iter() {
            for (t, slot) in shard.lock().iter_mut() {
                if slot.hits > 0 {
                    all.push((*t, slot.hits));
                    slot.hits = 0;
                }
            }
        }
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(k);
        all
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, reason = "tests")]
mod tests {
    use super::*;

    fn limits(rate: f64, burst: u32, conc: u32) -> TierLimits {
        TierLimits {
            rate_per_second: rate,
            burst,
            max_concurrency: conc,
            ..TierLimits::builtin("standard")
        }
    }

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn one_tenants_flood_does_not_touch_another() {
        let l = LocalLimiter::new();
        let (a, b) = (TenantId::generate(), TenantId::generate());
        let lim = limits(10.0, 5, 100);
        let now = SEC * 10;
        let mut kept = Vec::new();
        let mut refused = 0;
        for _ in 0..100 {
            match l.admit(a, &lim, now) {
                Ok(adm) => kept.push(adm),
                Err(Refusal::Rate(d)) => {
                    assert!(d.retry_after > Duration::ZERO);
                    refused += 1;
                }
                Err(other) => panic!("{other:?}"),
            }
        }
        assert_eq!((kept.len(), refused), (5, 95));
        // Twin: B, at the same instant, gets its own full burst.
        for _ in 0..5 {
            kept.push(l.admit(b, &lim, now).unwrap());
        }
    }

    #[test]
    fn concurrency_is_capped_and_released_on_drop() {
        let l = LocalLimiter::new();
        let a = TenantId::generate();
        let lim = limits(1000.0, 1000, 2);
        let now = SEC;
        let p1 = l.admit(a, &lim, now).unwrap();
        let _p2 = l.admit(a, &lim, now).unwrap();
        assert_eq!(
            l.admit(a, &lim, now).unwrap_err(),
            Refusal::Concurrency { max: 2 }
        );
        assert_eq!(l.inflight(a), 2);
        drop(p1);
        assert_eq!(l.inflight(a), 1);
        let _p3 = l.admit(a, &lim, now).unwrap();
        assert!(l.acquire(a, 2).is_err());
        assert!(l.acquire(a, 3).is_ok());
    }

    #[test]
    fn a_changed_tier_applies_at_once() {
        let l = LocalLimiter::new();
        let a = TenantId::generate();
        let now = SEC;
        let low = limits(1.0, 1, 10);
        assert!(l.admit(a, &low, now).is_ok());
        assert!(l.admit(a, &low, now).is_err());
        let high = limits(100.0, 100, 10);
        assert!(l.admit(a, &high, now).is_ok());
        // From a slow tier to a fast one: the slow tier's debt does not carry over as time.
        let slow = limits(0.01, 1, 10);
        assert!(
            l.admit(a, &slow, now).is_err(),
            "two owed at 100/s are 200 s at 0.01/s"
        );
        let fast = limits(1000.0, 1000, 10);
        for _ in 0..900 {
            assert!(l.admit(a, &fast, now).is_ok());
        }
    }

    #[test]
    fn idle_tenants_are_evicted_and_busy_ones_kept() {
        let l = LocalLimiter::new();
        let lim = limits(10.0, 10, 10);
        for _ in 0..1000 {
            drop(l.admit(TenantId::generate(), &lim, SEC));
        }
        let busy = TenantId::generate();
        let permit = l.admit(busy, &lim, SEC).unwrap();
        assert_eq!(l.len(), 1001);
        assert!(l.memory_bytes() > 0);
        // Not yet idle long enough.
        assert_eq!(l.sweep(SEC * 2, SEC * 5), 0);
        assert_eq!(l.sweep(SEC * 20, SEC * 5), 1000);
        assert_eq!(l.len(), 1, "the tenant with a request in flight stays");
        drop(permit);
        assert_eq!(l.sweep(SEC * 20, SEC * 5), 1);
        assert!(l.is_empty());
    }

    #[test]
    fn top_tenants_by_traffic() {
        let l = LocalLimiter::new();
        let lim = limits(1e6, 1_000_000, 1000);
        let ids: Vec<TenantId> = (0..5).map(|_| TenantId::generate()).collect();
        for (i, t) in ids.iter().enumerate() {
            for _ in 0..=i {
                drop(l.admit(*t, &lim, SEC));
            }
        }
        let top = l.take_top(2);
        assert_eq!(top, vec![(ids[4], 5), (ids[3], 4)]);
        assert!(l.take_top(2).is_empty(), "counts are reset");
    }
}
