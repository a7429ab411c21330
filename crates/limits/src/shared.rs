//! Limits shared by every instance, through Redis: one atomic Lua script per request (EVALSHA,
//! one round trip) runs the same GCRA as [`crate::gcra`] on Redis's clock and takes a
//! concurrency lease, so N instances together hold a tenant to its limits, not N times them.
//!
//! When Redis cannot be reached, [`Limiter`] answers from this instance's local limiter (logged
//! once per outage, counted in `bulkhead_limiter_redis_fallbacks_total`) and tries Redis again
//! after a short pause; state kept in Redis is authoritative again as soon as it answers.
//! During an outage each instance enforces the limits on its own, so a tenant can get up to
//! N times its rate across N instances: the price of staying up.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bulkhead_core::TenantId;
use bulkhead_core::tier::TierLimits;
use metrics::{Counter, Gauge};
use parking_lot::Mutex;
use redis::aio::ConnectionManager;

use crate::gcra::{self, RateDecision};
use crate::local::{LocalLimiter, Permit, Refusal};

/// GCRA and a concurrency lease, atomically. Times are microseconds on Redis's clock (`TIME`),
/// so instances with skewed clocks agree. Returns `{allowed, remaining, reset_us, retry_us,
/// concurrency_refused}`.
///
/// KEYS: the tenant's rate hash, its lease set (same hash slot: `{tenant}`).
/// ARGV: interval_us, burst, max_concurrency, lease id, lease ttl_us.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tau = interval * burst
local st = redis.call('HMGET', KEYS[1], 'tat', 'iv')
local tat = tonumber(st[1]) or 0
local old = tonumber(st[2]) or 0
if old > 0 and old ~= interval and tat > now then
  tat = now + math.floor((tat - now) * interval / old)
end
if tat < now then tat = now end
local new_tat = tat + interval
local ahead = new_tat - now
if ahead > tau then
  return {0, 0, tat - now, ahead - tau, 0}
end
local maxc = tonumber(ARGV[3])
local ttl = tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= maxc then
  return {0, 0, 0, 0, 1}
end
redis.call('ZADD', KEYS[2], now + ttl, ARGV[4])
redis.call('PEXPIRE', KEYS[2], math.ceil(ttl / 1000) + 1000)
redis.call('HSET', KEYS[1], 'tat', new_tat, 'iv', interval)
redis.call('PEXPIRE', KEYS[1], math.ceil(tau / 1000) + 1000)
return {1, math.floor((tau - ahead) / interval), ahead, 0, 0}
";

/// How long a Redis answer may take before the local limiter answers instead.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);
/// After a failure, how long to answer locally before trying Redis again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// A concurrency slot: local, or a lease in Redis (removed when dropped). A shared slot
/// also holds an uncapped local permit, so this instance's in-flight counts stay true.
#[derive(Debug)]
pub enum Slot {
    Local(Permit),
    Shared(Lease, Option<Permit>),
}

/// A request's lease in a tenant's Redis lease set. Dropping it removes the lease in the
/// background; a lease an instance never removes (it crashed) expires after the lease TTL.
pub struct Lease {
    conn: ConnectionManager,
    key: String,
    id: String,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("id", &self.id).finish()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut conn = self.conn.clone();
        let key = std::mem::take(&mut self.key);
        let id = std::mem::take(&mut self.id);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let r: redis::RedisResult<i64> =
                    redis::cmd("ZREM").arg(&key).arg(&id).query_async(&mut conn).await;
                if let Err(e) = r {
                    tracing::debug!(error = %e, "could not release a concurrency lease; it expires");
                }
            });
        }
    }
}

/// An admitted request.
#[derive(Debug)]
pub struct Admitted {
    pub rate: RateDecision,
    pub slot: Slot,
}

/// Where limits are kept: this instance only, or Redis (with this instance as the fallback).
pub struct Limiter {
    local: LocalLimiter,
    redis: Option<Redis>,
}

struct Redis {
    conn: ConnectionManager,
    script: redis::Script,
    /// Distinguishes this instance's leases.
    instance: u64,
    seq: AtomicU64,
    lease_ttl_us: u64,
    /// While set and in the future, Redis is not tried.
    pause_until: Mutex<Option<Instant>>,
    /// Whether the last attempt failed (to log transitions once).
    down: AtomicBool,
    up_gauge: Gauge,
    fallbacks: Counter,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("local", &self.local)
            .field("shared", &self.redis.is_some())
            .finish()
    }
}

/// Checks that `url` is a Redis URL the shared limiter can use (without connecting).
pub fn check_url(url: &str) -> Result<(), RedisUrlError> {
    redis::Client::open(url)
        .map(drop)
        .map_err(|e| RedisUrlError(e.to_string()))
}

/// Why a Redis limiter could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("invalid redis url: {0}")]
pub struct RedisUrlError(String);

impl Limiter {
    /// This instance's limits only.
    pub fn local(local: LocalLimiter) -> Self {
        Self { local, redis: None }
    }

    /// Limits shared through the Redis at `url` (connected lazily: an unreachable Redis at
    /// start means local limits until it answers). `lease_ttl` bounds how long a crashed
    /// instance's concurrency leases count (use the request timeout).
    pub fn shared(
        local: LocalLimiter,
        url: &str,
        lease_ttl: Duration,
        up_gauge: Gauge,
        fallbacks: Counter,
    ) -> Result<Self, RedisUrlError> {
        let client = redis::Client::open(url).map_err(|e| RedisUrlError(e.to_string()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        let conn = client
            .get_connection_manager_lazy(config)
            .map_err(|e| RedisUrlError(e.to_string()))?;
        // Random per process (std's hasher keys are drawn from the OS).
        let instance = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            h.finish()
        };
        Ok(Self {
            local,
            redis: Some(Redis {
                conn,
                script: redis::Script::new(SCRIPT),
                instance,
                seq: AtomicU64::new(0),
                lease_ttl_us: u64::try_from(lease_ttl.as_micros()).unwrap_or(u64::MAX),
                pause_until: Mutex::new(None),
                down: AtomicBool::new(false),
                up_gauge,
                fallbacks,
            }),
        })
    }

    /// This instance's limiter (the fallback, and the metrics' traffic counts).
    pub fn local_limiter(&self) -> &LocalLimiter {
        &self.local
    }

    /// Whether limits are shared through Redis.
    pub fn is_shared(&self) -> bool {
        self.redis.is_some()
    }

    /// Admits a request of `tenant` held to `limits`, or says why not.
    pub async fn admit(&self, tenant: TenantId, limits: &TierLimits) -> Result<Admitted, Refusal> {
        if let Some(r) = &self.redis
            && r.available()
        {
            match tokio::time::timeout(REDIS_TIMEOUT, r.admit(tenant, limits)).await {
                Ok(Ok(outcome)) => {
                    r.succeeded();
                    return match outcome {
                        // The uncapped local permit counts the request in flight here (and
                        // for the metrics' ranking).
                        Ok(mut a) => {
                            if let Slot::Shared(_, ref mut local) = a.slot {
                                *local = self.local.acquire(tenant, u32::MAX).ok();
                            }
                            Ok(a)
                        }
                        Err(refusal) => {
                            self.local.count(tenant);
                            Err(refusal)
                        }
                    };
                }
                Ok(Err(e)) => r.failed(&e.to_string()),
                Err(_) => r.failed("no answer in time"),
            }
        }
        self.local
            .admit(tenant, limits, self.local.now())
            .map(|a| Admitted {
                rate: a.rate,
                slot: Slot::Local(a.permit),
            })
    }
}

impl Redis {
    fn available(&self) -> bool {
        let mut pause = self.pause_until.lock();
        match *pause {
            Some(until) if Instant::now() < until => false,
            Some(_) => {
                *pause = None;
                true
            }
            None => true,
        }
    }

    fn failed(&self, why: &str) {
        *self.pause_until.lock() = Some(Instant::now() + RETRY_AFTER_FAILURE);
        self.fallbacks.increment(1);
        self.up_gauge.set(0.0);
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = why,
                "redis is unreachable: enforcing limits locally until it answers"
            );
        }
    }

    fn succeeded(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!("redis answers again: limits are shared across instances again");
        }
        self.up_gauge.set(1.0);
    }

    async fn admit(
        &self,
        tenant: TenantId,
        limits: &TierLimits,
    ) -> redis::RedisResult<Result<Admitted, Refusal>> {
        let interval_us = (gcra::interval_nanos(limits.rate_per_second) / 1000).max(1);
        let rate_key = format!("bulkhead:{{{tenant}}}:rate");
        let lease_key = format!("bulkhead:{{{tenant}}}:leases");
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:x}-{seq:x}", self.instance);
        let mut conn = self.conn.clone();
        let out: Vec<i64> = self
            .script
            .key(&rate_key)
            .key(&lease_key)
            .arg(interval_us)
            .arg(limits.burst.max(1))
            .arg(limits.max_concurrency)
            .arg(&id)
            .arg(self.lease_ttl_us)
            .invoke_async(&mut conn)
            .await?;
        let get = |i: usize| out.get(i).copied().unwrap_or(0);
        let us = |v: i64| Duration::from_micros(u64::try_from(v).unwrap_or(0));
        let decision = RateDecision {
            allowed: get(0) == 1,
            limit: limits.burst.max(1),
            remaining: u32::try_from(get(1)).unwrap_or(0),
            reset: us(get(2)),
            retry_after: us(get(3)),
        };
        if get(4) == 1 {
            return Ok(Err(Refusal::Concurrency {
                max: limits.max_concurrency,
            }));
        }
        if !decision.allowed {
            return Ok(Err(Refusal::Rate(decision)));
        }
        Ok(Ok(Admitted {
            rate: decision,
            slot: Slot::Shared(
                Lease {
                    conn,
                    key: lease_key,
                    id,
                },
                None,
            ),
        }))
    }
}
