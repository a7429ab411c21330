//! Service tiers: the limits a tenant is held to, so that one tenant's traffic or data cannot
//! take capacity another tenant is owed.
//!
//! A tier is a [`TierLimits`]; a tenant is on one tier and may carry [`LimitOverrides`] on top
//! of it. The enforcement lives elsewhere (`bulkhead-limits` for rates and concurrency, the
//! record service for storage quotas); this module is only the vocabulary.

use serde::{Deserialize, Serialize};

/// Every limit a tier sets. All are per tenant.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TierLimits {
    /// Sustained requests per second (GCRA emission rate).
    pub rate_per_second: f64,
    /// Requests that may arrive at once on top of an idle sustained rate (GCRA burst).
    pub burst: u32,
    /// Requests of the tenant being served at the same moment.
    pub max_concurrency: u32,
    /// Records stored, over all collections.
    pub max_records: u64,
    /// Bytes stored (record ciphertexts).
    pub max_bytes: u64,
    /// Collections defined.
    pub max_collections: u64,
    /// Largest request body, in bytes (never above the server-wide `limits.max_body_bytes`).
    pub max_body_bytes: u64,
    /// The tenant's share of the server when it is saturated: the fair queue serves waiting
    /// tenants in proportion to their weights (deficit round robin). A tier stored before
    /// weights existed reads as weight 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// The weight of a tier stored without one.
fn default_weight() -> u32 {
    1
}

/// Highest weight a tier may set: a tenant's waiting requests are served at most this many in
/// a row before the next waiting tenant's turn.
pub const MAX_WEIGHT: u32 = 1000;

/// Changes to a tier's limits: a field that is `None` keeps the limit it is applied to. Used
/// for a tenant's own overrides and for the body of `PUT /v1/tiers/{name}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_records: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_collections: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// The share of a saturated server (fair-queue weight, 1–1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// Highest sustained rate a tier may set (a larger figure is a typo, not a plan).
pub const MAX_RATE_PER_SECOND: f64 = 1_000_000.0;

impl TierLimits {
    /// The built-in limits of the tiers every server knows. Unknown names get `standard`'s.
    pub fn builtin(name: &str) -> Self {
        const MIB: u64 = 1024 * 1024;
        match name {
            "free" => Self {
                rate_per_second: 20.0,
                burst: 40,
                max_concurrency: 8,
                max_records: 10_000,
                max_bytes: 64 * MIB,
                max_collections: 10,
                max_body_bytes: 256 * 1024,
                weight: 1,
            },
            "enterprise" => Self {
                rate_per_second: 20_000.0,
                burst: 40_000,
                max_concurrency: 1024,
                max_records: 1_000_000_000,
                max_bytes: 1024 * 1024 * MIB,
                max_collections: 10_000,
                max_body_bytes: MIB,
                weight: 4,
            },
            _ => Self {
                rate_per_second: 500.0,
                burst: 1000,
                max_concurrency: 64,
                max_records: 1_000_000,
                max_bytes: 4 * 1024 * MIB,
                max_collections: 200,
                max_body_bytes: MIB,
                weight: 2,
            },
        }
    }

    /// These limits with `o` applied on top.
    #[must_use]
    pub fn with(&self, o: &LimitOverrides) -> Self {
        Self {
            rate_per_second: o.rate_per_second.unwrap_or(self.rate_per_second),
            burst: o.burst.unwrap_or(self.burst),
            max_concurrency: o.max_concurrency.unwrap_or(self.max_concurrency),
            max_records: o.max_records.unwrap_or(self.max_records),
            max_bytes: o.max_bytes.unwrap_or(self.max_bytes),
            max_collections: o.max_collections.unwrap_or(self.max_collections),
            max_body_bytes: o.max_body_bytes.unwrap_or(self.max_body_bytes),
            weight: o.weight.unwrap_or(self.weight),
        }
    }

    /// Refuses limits that could not be enforced sensibly.
    pub fn check(&self) -> Result<(), TierError> {
        if !(self.rate_per_second.is_finite()
            && self.rate_per_second > 0.0
            && self.rate_per_second <= MAX_RATE_PER_SECOND)
        {
            return Err(TierError(format!(
                "`rate_per_second` must be above 0 and at most {MAX_RATE_PER_SECOND}"
            )));
        }
        if self.burst == 0 {
            return Err(TierError("`burst` must be at least 1".into()));
        }
        if self.max_concurrency == 0 {
            return Err(TierError("`max_concurrency` must be at least 1".into()));
        }
        if self.max_body_bytes < 1024 {
            return Err(TierError("`max_body_bytes` must be at least 1024".into()));
        }
        if !(1..=MAX_WEIGHT).contains(&self.weight) {
            return Err(TierError(format!(
                "`weight` must be between 1 and {MAX_WEIGHT}"
            )));
        }
        Ok(())
    }
}

impl LimitOverrides {
    /// `true` when nothing is overridden.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Limits that cannot be enforced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TierError(pub String);

/// What a tenant has stored, as the storage quotas count it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    pub records: u64,
    /// Stored bytes of record ciphertexts.
    pub bytes: u64,
    pub collections: u64,
}

/// The storage quota a write would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    Records,
    Bytes,
    Collections,
}

impl Quota {
    /// The quota's name in the API (`max_records`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Quota::Records => "max_records",
            Quota::Bytes => "max_bytes",
            Quota::Collections => "max_collections",
        }
    }
}

impl Usage {
    /// The first quota of `limits` that `self` plus the given additions would exceed.
    pub fn exceeds(
        &self,
        limits: &TierLimits,
        add_records: u64,
        add_bytes: u64,
        add_collections: u64,
    ) -> Option<Quota> {
        if add_records > 0 && self.records.saturating_add(add_records) > limits.max_records {
            return Some(Quota::Records);
        }
        if add_bytes > 0 && self.bytes.saturating_add(add_bytes) > limits.max_bytes {
            return Some(Quota::Bytes);
        }
        if add_collections > 0
            && self.collections.saturating_add(add_collections) > limits.max_collections
        {
            return Some(Quota::Collections);
        }
        None
    }

    /// For how long, in seconds, this figure may stand in for a fresh read in the quota checks
    /// of writes that add to the quotas whose `add_*` is non-zero: as long as the tenant,
    /// writing as fast as its rate limit lets it (its whole burst at once, then its sustained
    /// rate), cannot have taken one of those quotas past `near` (a share of it, such as 0.9)
    /// since the figure was read. A write adds at most one record, one collection, and
    /// `max_write_bytes` stored bytes (the largest record the server accepts, sealed).
    /// `0.0`: not at all (near a quota already).
    ///
    /// The bound holds across instances only while the rate limit does (with Redis); the
    /// caller keeps counting its own writes into the figure, which only makes it tighter.
    pub fn trusted_for_seconds(
        &self,
        limits: &TierLimits,
        add_records: u64,
        add_bytes: u64,
        add_collections: u64,
        max_write_bytes: u64,
        near: f64,
    ) -> f64 {
        #[allow(
            clippy::cast_precision_loss,
            reason = "a time bound from counts far below 2^52 in practice; precision is not needed"
        )]
        let horizon = |used: u64, max: u64, per_write: u64| {
            let room = max as f64 * near - used as f64;
            let burst = f64::from(limits.burst) * per_write as f64;
            let per_second = limits.rate_per_second * per_write as f64;
            if room <= burst || per_second <= 0.0 {
                0.0
            } else {
                (room - burst) / per_second
            }
        };
        let mut t = f64::INFINITY;
        if add_records > 0 {
            t = t.min(horizon(self.records, limits.max_records, 1));
        }
        if add_bytes > 0 {
            t = t.min(horizon(self.bytes, limits.max_bytes, max_write_bytes));
        }
        if add_collections > 0 {
            t = t.min(horizon(self.collections, limits.max_collections, 1));
        }
        t
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn a_usage_figure_is_trusted_only_while_the_rate_cannot_reach_a_quota() {
        let l = TierLimits::builtin("standard"); // 500/s, burst 1000, 1M records, 4 GiB
        let far = Usage {
            records: 1000,
            bytes: 1 << 20,
            collections: 1,
        };
        let max = 256 * 1024 + 41; // the largest record (the default), sealed
        // Records: (900,000 - 1,000 - 1,000) / 500 = 1,796 s.
        assert!((far.trusted_for_seconds(&l, 1, 0, 0, max, 0.9) - 1796.0).abs() < 1e-6);
        // Bytes bound it much sooner: every write may bring the largest record.
        let per = max as f64;
        let expect =
            (l.max_bytes as f64 * 0.9 - (1u64 << 20) as f64 - 1000.0 * per) / (500.0 * per);
        let t = far.trusted_for_seconds(&l, 1, 100, 0, max, 0.9);
        assert!((t - expect).abs() < 1e-6 && t > 1.0 && t < 30.0, "{t}");
        // A collection write: 180 - 1 collections of room is less than the burst.
        assert!(far.trusted_for_seconds(&l, 0, 0, 1, max, 0.9) == 0.0);
        // Near a quota: not trusted at all; nothing added: no bound from that quota.
        let near = Usage {
            records: 899_000,
            ..far
        };
        assert!(near.trusted_for_seconds(&l, 1, 0, 0, max, 0.9) == 0.0);
        assert!(
            near.trusted_for_seconds(&l, 0, 0, 0, max, 0.9)
                .is_infinite()
        );
        // The twin: a slower tier may trust the same figure for longer.
        let slow = TierLimits {
            rate_per_second: 5.0,
            ..l
        };
        assert!(far.trusted_for_seconds(&slow, 1, 0, 0, max, 0.9) > 1796.0 * 99.0);
    }

    #[test]
    fn overrides_apply_field_by_field() {
        let base = TierLimits::builtin("free");
        let o = LimitOverrides {
            burst: Some(7),
            ..Default::default()
        };
        let l = base.with(&o);
        assert_eq!(l.burst, 7);
        assert_eq!(l.rate_per_second, base.rate_per_second);
        assert!(LimitOverrides::default().is_empty());
        assert!(!o.is_empty());
    }

    #[test]
    fn nonsense_limits_are_refused() {
        let ok = TierLimits::builtin("standard");
        assert!(ok.check().is_ok());
        for bad in [
            TierLimits {
                rate_per_second: 0.0,
                ..ok
            },
            TierLimits {
                rate_per_second: f64::NAN,
                ..ok
            },
            TierLimits { burst: 0, ..ok },
            TierLimits {
                max_concurrency: 0,
                ..ok
            },
            TierLimits {
                max_body_bytes: 10,
                ..ok
            },
            TierLimits { weight: 0, ..ok },
            TierLimits {
                weight: MAX_WEIGHT + 1,
                ..ok
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn built_in_weights_grow_with_the_tier_and_old_rows_read_as_one() {
        let w = |n| TierLimits::builtin(n).weight;
        assert_eq!((w("free"), w("standard"), w("enterprise")), (1, 2, 4));
        let mut old = serde_json::to_value(TierLimits::builtin("enterprise")).unwrap();
        old.as_object_mut().unwrap().remove("weight");
        let back: TierLimits = serde_json::from_value(old).unwrap();
        assert_eq!(back.weight, 1);
        let o: LimitOverrides = serde_json::from_str(r#"{"weight": 3}"#).unwrap();
        assert_eq!(TierLimits::builtin("free").with(&o).weight, 3);
    }

    #[test]
    fn quotas_name_the_first_exceeded() {
        let l = TierLimits {
            max_records: 2,
            max_bytes: 100,
            max_collections: 1,
            ..TierLimits::builtin("free")
        };
        let u = Usage {
            records: 2,
            bytes: 50,
            collections: 1,
        };
        assert_eq!(u.exceeds(&l, 1, 10, 0), Some(Quota::Records));
        assert_eq!(u.exceeds(&l, 0, 51, 0), Some(Quota::Bytes));
        assert_eq!(u.exceeds(&l, 0, 50, 0), None);
        assert_eq!(u.exceeds(&l, 0, 0, 1), Some(Quota::Collections));
        // Shrinking or rewriting in place is always allowed.
        assert_eq!(u.exceeds(&l, 0, 0, 0), None);
    }
}
