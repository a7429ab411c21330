//! Tenants as the registry knows them.

use serde::{Deserialize, Serialize};

use crate::{TenantId, TenantName, TierName, Timestamp};

/// Where a tenant is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatus {
    /// Serves traffic.
    Active,
    /// Refuses all tenant-plane traffic (403); data and keys are kept.
    Suspended,
    /// Offboarded: data keys destroyed (crypto-shredded), rows purged, id never reused.
    Deleted,
}

impl TenantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
            TenantStatus::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "suspended" => Some(Self::Suspended),
            "deleted" => Some(Self::Deleted),
            _ => None,
        }
    }
}

/// A tenant's public description, as the operator API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Tenant {
    /// A UUIDv7, never reused.
    #[schema(value_type = String, format = Uuid)]
    pub id: TenantId,
    #[schema(value_type = String, example = "Acme Corp")]
    pub name: TenantName,
    #[schema(value_type = String, example = "standard")]
    pub tier: TierName,
    pub status: TenantStatus,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// Where a tenant's records live. Today every tenant is in the shared pool; a dedicated
/// database per tenant (the silo model) is a second variant when it is built.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Placement {
    /// The shared pool of the configured storage backend.
    Shared,
}

impl Placement {
    pub fn as_str(&self) -> &'static str {
        match self {
            Placement::Shared => "shared",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "shared" => Some(Placement::Shared),
            _ => None,
        }
    }
}
