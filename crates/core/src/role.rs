//! Roles inside a tenant and the actions they allow.
//!
//! This is the built-in, coarse authorization that every tenant-plane request passes. Decisions
//! are values ([`Decision`]) that default to deny; there is no `bool` to forget to check.

use serde::{Deserialize, Serialize};

/// A role a token can carry. Roles are scoped to the token's tenant: `admin` of tenant A is
/// nothing in tenant B.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything inside its tenant: collections, schemas, records.
    Admin,
    /// Reads and writes records.
    Member,
    /// Reads records.
    Reader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Reader => "reader",
        }
    }
}

/// A non-empty, duplicate-free set of roles (at most one of each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Roles {
    admin: bool,
    member: bool,
    reader: bool,
}

impl Roles {
    /// Builds a role set; `None` if `roles` is empty.
    pub fn from_slice(roles: &[Role]) -> Option<Self> {
        let mut set = Roles::default();
        for r in roles {
            match r {
                Role::Admin => set.admin = true,
                Role::Member => set.member = true,
                Role::Reader => set.reader = true,
            }
        }
        (!set.is_empty()).then_some(set)
    }

    fn is_empty(&self) -> bool {
        !(self.admin || self.member || self.reader)
    }

    pub fn contains(&self, r: Role) -> bool {
        match r {
            Role::Admin => self.admin,
            Role::Member => self.member,
            Role::Reader => self.reader,
        }
    }

    pub fn to_vec(self) -> Vec<Role> {
        [Role::Admin, Role::Member, Role::Reader]
            .into_iter()
            .filter(|r| self.contains(*r))
            .collect()
    }

    /// Decides whether these roles allow `action` with the built-in role rules (the fallback
    /// when the policy engine is switched off). Anything not granted is denied.
    pub fn decide(&self, action: Action) -> Decision {
        use Action::*;
        let allowed = match action {
            ReadRecord | ListRecords | ListCollections | ReadCollection => {
                self.admin || self.member || self.reader
            }
            CreateRecord | UpdateRecord | DeleteRecord => self.admin || self.member,
            ManageCollection | ReadPolicies | ManagePolicies | ReadAudit => self.admin,
            // Without the policy engine every caller sees every field.
            ReadField => true,
        };
        if allowed {
            Decision::Allow
        } else {
            Decision::Deny { action }
        }
    }
}

/// What a tenant-plane request wants to do. Each is a Cedar action of the same name
/// (`Bulkhead::Action::"record:read"`, …); see `docs/policies.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    ReadRecord,
    ListRecords,
    CreateRecord,
    UpdateRecord,
    DeleteRecord,
    ListCollections,
    ReadCollection,
    ManageCollection,
    ReadPolicies,
    ManagePolicies,
    /// Seeing a field of a given classification in a record.
    ReadField,
    /// Reading the tenant's own audit log, checkpoints and proofs.
    ReadAudit,
}

impl Action {
    /// Every action, in a stable order.
    pub const ALL: [Action; 12] = [
        Action::ReadRecord,
        Action::ListRecords,
        Action::CreateRecord,
        Action::UpdateRecord,
        Action::DeleteRecord,
        Action::ListCollections,
        Action::ReadCollection,
        Action::ManageCollection,
        Action::ReadPolicies,
        Action::ManagePolicies,
        Action::ReadField,
        Action::ReadAudit,
    ];

    /// The name used in policies, problem responses and audit entries.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::ReadRecord => "record:read",
            Action::ListRecords => "record:list",
            Action::CreateRecord => "record:create",
            Action::UpdateRecord => "record:update",
            Action::DeleteRecord => "record:delete",
            Action::ListCollections => "collection:list",
            Action::ReadCollection => "collection:read",
            Action::ManageCollection => "collection:manage",
            Action::ReadPolicies => "policy:read",
            Action::ManagePolicies => "policy:manage",
            Action::ReadField => "field:read",
            Action::ReadAudit => "audit:read",
        }
    }

    /// Parses an action name as [`Action::as_str`] prints it.
    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Whether the action changes tenant data or configuration.
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Action::CreateRecord
                | Action::UpdateRecord
                | Action::DeleteRecord
                | Action::ManageCollection
                | Action::ManagePolicies
        )
    }
}

/// An authorization decision. There is no default: every path must produce one explicitly.
#[must_use = "a decision that is not checked allows nothing"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny { action: Action },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(roles: &[Role], action: Action, allowed: bool) {
        let set = Roles::from_slice(roles);
        let decision = set.map(|s| s.decide(action));
        let want = if allowed {
            Decision::Allow
        } else {
            Decision::Deny { action }
        };
        assert_eq!(decision, Some(want), "{roles:?} {action:?}");
    }

    #[test]
    fn role_matrix() {
        use Action::*;
        for a in [ReadRecord, ListRecords, ListCollections, ReadCollection] {
            check(&[Role::Reader], a, true);
            check(&[Role::Member], a, true);
            check(&[Role::Admin], a, true);
        }
        for a in [CreateRecord, UpdateRecord, DeleteRecord] {
            check(&[Role::Reader], a, false);
            check(&[Role::Member], a, true);
            check(&[Role::Admin], a, true);
        }
        check(&[Role::Reader], ManageCollection, false);
        check(&[Role::Member], ManageCollection, false);
        check(&[Role::Admin], ManageCollection, true);
        for a in [ReadPolicies, ManagePolicies, ReadAudit] {
            check(&[Role::Reader], a, false);
            check(&[Role::Member], a, false);
            check(&[Role::Admin], a, true);
        }
        check(&[Role::Reader, Role::Member], CreateRecord, true);
        for a in Action::ALL {
            assert_eq!(Action::parse(a.as_str()), Some(a));
        }
        assert_eq!(Roles::from_slice(&[]), None);
    }
}
