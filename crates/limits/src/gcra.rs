//! The generic cell rate algorithm (GCRA): a token bucket kept as one number per tenant, the
//! theoretical arrival time (TAT) of the next request at the sustained rate.
//!
//! Why not `governor`: its keyed limiter has one quota for every key, while each Bulkhead
//! tenant has its own (its tier's, plus overrides), changeable at any time; and its state
//! cannot be shared through Redis. The algorithm is a handful of integer operations, written
//! here once and mirrored by the Redis script.
//!
//! With emission interval `T = 1 / rate` and burst `b`, a request at `now` is allowed when
//! `max(TAT, now) + T - now <= b * T`; then `TAT = max(TAT, now) + T`.

use std::time::Duration;

/// Nanoseconds per second.
const NANOS: f64 = 1e9;

/// The outcome of a rate check, with what the `RateLimit` headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    /// The burst: requests allowed at once by the policy.
    pub limit: u32,
    /// Requests that could still be sent now.
    pub remaining: u32,
    /// Until the tenant is back to a full burst.
    pub reset: Duration,
    /// When refused: until the next request would be allowed.
    pub retry_after: Duration,
}

/// The emission interval of `rate` requests per second, in nanoseconds (at least 1).
pub fn interval_nanos(rate_per_second: f64) -> u64 {
    let t = NANOS / rate_per_second.max(1e-9);
    if t.is_finite() && t >= 1.0 {
        // Bounded above by 1e18 (rate >= 1e-9), so the conversion cannot wrap.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "finite, positive and at most 1e18"
        )]
        let t = t.min(1e18) as u64;
        t
    } else {
        1
    }
}

/// Checks one request against a tenant's TAT (nanoseconds on the limiter's clock), without
/// changing it. Returns the decision and the TAT to store if the request is admitted.
pub fn check(tat: u64, now: u64, rate_per_second: f64, burst: u32) -> (RateDecision, u64) {
    let t = interval_nanos(rate_per_second);
    let burst = burst.max(1);
    let tau = t.saturating_mul(u64::from(burst));
    let new_tat = tat.max(now).saturating_add(t);
    let ahead = new_tat - now;
    if ahead > tau {
        let decision = RateDecision {
            allowed: false,
            limit: burst,
            remaining: 0,
            reset: Duration::from_nanos(tat.max(now) - now),
            retry_after: Duration::from_nanos(ahead - tau),
        };
        (decision, tat)
    } else {
        let remaining = u32::try_from((tau - ahead) / t).unwrap_or(u32::MAX);
        let decision = RateDecision {
            allowed: true,
            limit: burst,
            remaining,
            reset: Duration::from_nanos(ahead),
            retry_after: Duration::ZERO,
        };
        (decision, new_tat)
    }
}

/// Carries a tenant's state over a change of its rate: the requests it owes (the TAT's lead on
/// `now`, in emission intervals) stay the same, measured in the new interval. Without this a
/// tenant moved from a slow tier to a fast one would stay refused for the slow tier's debt.
pub fn rescale(tat: u64, now: u64, old_interval: u64, new_interval: u64) -> u64 {
    if old_interval == 0 || old_interval == new_interval || tat <= now {
        return tat;
    }
    let debt = u128::from(tat - now) * u128::from(new_interval) / u128::from(old_interval);
    now.saturating_add(u64::try_from(debt).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    /// Runs `n` requests at `now`, returns how many were allowed and the final TAT.
    fn burst_at(mut tat: u64, now: u64, rate: f64, burst: u32, n: u32) -> (u32, u64) {
        let mut ok = 0;
        for _ in 0..n {
            let (d, next) = check(tat, now, rate, burst);
            if d.allowed {
                ok += 1;
            }
            tat = next;
        }
        (ok, tat)
    }

    #[test]
    fn a_full_burst_then_the_sustained_rate() {
        let now = 100 * S;
        let (ok, tat) = burst_at(0, now, 10.0, 5, 20);
        assert_eq!(ok, 5, "a burst of 5 from idle");
        // 0.1 s later exactly one more fits.
        let (ok, tat) = burst_at(tat, now + S / 10, 10.0, 5, 3);
        assert_eq!(ok, 1);
        // After a full second, 10 more (the burst caps at 5).
        let (ok, _) = burst_at(tat, now + S / 10 + S, 10.0, 5, 20);
        assert_eq!(ok, 5);
    }

    #[test]
    fn over_a_long_window_the_rate_holds() {
        // Offered 50/s for 10 s against a limit of 10/s, burst 10: 10*10 + 10 admitted.
        let mut tat = 0;
        let mut ok = 0;
        for i in 0..500u64 {
            let now = S + i * S / 50;
            let (d, next) = check(tat, now, 10.0, 10);
            ok += u32::from(d.allowed);
            tat = next;
        }
        assert!((109..=111).contains(&ok), "{ok}");
    }

    #[test]
    fn headers_figures() {
        let (d, tat) = check(0, S, 2.0, 4);
        assert!(d.allowed);
        assert_eq!((d.limit, d.remaining), (4, 3));
        assert_eq!(d.reset, Duration::from_millis(500));
        let (_, tat) = burst_at(tat, S, 2.0, 4, 3);
        let (d, same) = check(tat, S, 2.0, 4);
        assert!(!d.allowed);
        assert_eq!(same, tat, "a refusal changes nothing");
        assert_eq!(d.retry_after, Duration::from_millis(500));
        assert_eq!(d.reset, Duration::from_secs(2));
    }

    #[test]
    fn a_new_rate_keeps_the_requests_owed() {
        // Two requests owed at 1/s (TAT 2 s ahead) are two requests owed at 100/s.
        assert_eq!(rescale(12 * S, 10 * S, S, S / 100), 10 * S + S / 50);
        assert_eq!(rescale(12 * S, 10 * S, S / 100, S), 10 * S + 200 * S);
        // Nothing owed, or the same rate: unchanged.
        assert_eq!(rescale(5 * S, 10 * S, S, 7), 5 * S);
        assert_eq!(rescale(12 * S, 10 * S, S, S), 12 * S);
        assert_eq!(rescale(12 * S, 10 * S, 0, S), 12 * S);
    }

    #[test]
    fn extreme_parameters_do_not_overflow() {
        // Near the end of the clock the arithmetic saturates instead of wrapping.
        let (d, tat) = check(u64::MAX - 5, u64::MAX - 10, 1e-9, 1);
        assert!(d.remaining <= 1);
        assert_eq!(tat, u64::MAX);
        let (d, _) = check(0, 0, 1e12, u32::MAX);
        assert!(d.allowed);
        assert_eq!(interval_nanos(f64::INFINITY), 1);
    }
}
