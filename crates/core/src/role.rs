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

    /// Decides whether these roles allow `action`. Anything not granted is denied.
    pub fn decide(&self, action: Action) -> Decision {
        let allowed = match action {
            Action::ReadRecord | Action::ListRecords | Action::ListCollections => {
                self.admin || self.member || self.reader
            }
            Action::WriteRecord | Action::DeleteRecord => self.admin || self.member,
            Action::ManageCollection | Action::ReadAudit => self.admin,
        };
        if allowed {
            Decision::Allow
        } else {
            Decision::Deny { action }
        }
    }
}

/// What a tenant-plane request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    ReadRecord,
    ListRecords,
    WriteRecord,
    DeleteRecord,
    ListCollections,
    ManageCollection,
    /// Reading the tenant's own audit log, checkpoints and proofs.
    ReadAudit,
}

impl Action {
    /// The name used in problem responses and audit entries.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::ReadRecord => "record:read",
            Action::ListRecords => "record:list",
            Action::WriteRecord => "record:write",
            Action::DeleteRecord => "record:delete",
            Action::ListCollections => "collection:list",
            Action::ManageCollection => "collection:manage",
            Action::ReadAudit => "audit:read",
        }
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
        for a in [ReadRecord, ListRecords, ListCollections] {
            check(&[Role::Reader], a, true);
            check(&[Role::Member], a, true);
            check(&[Role::Admin], a, true);
        }
        for a in [WriteRecord, DeleteRecord] {
            check(&[Role::Reader], a, false);
            check(&[Role::Member], a, true);
            check(&[Role::Admin], a, true);
        }
        check(&[Role::Reader], ManageCollection, false);
        check(&[Role::Member], ManageCollection, false);
        check(&[Role::Admin], ManageCollection, true);
        check(&[Role::Reader], ReadAudit, false);
        check(&[Role::Member], ReadAudit, false);
        check(&[Role::Admin], ReadAudit, true);
        check(&[Role::Reader, Role::Member], WriteRecord, true);
        assert_eq!(Roles::from_slice(&[]), None);
    }
}
