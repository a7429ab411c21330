//! The verified tenant context: the capability that tenant data paths require.
//!
//! INVARIANT: a [`TenantContext`] is created only by [`crate::token::Verifier::verify`], after
//! the token's signature was checked with a key that belongs to the tenant the token names. Its
//! fields are private and it has no `Default`, no `Deserialize` and no public constructor, so no
//! other code — not a handler, not a header, not a query parameter — can make one up.

use crate::role::{Action, Decision};
use crate::{KeyId, Roles, Subject, TenantId, Timestamp};

#[derive(Debug, Clone)]
pub struct TenantContext {
    tenant: TenantId,
    subject: Subject,
    roles: Roles,
    /// The key that signed the token: a cached context is refused once its key is gone.
    kid: KeyId,
    /// The token's `jti`, a unique id for this token.
    token_id: String,
    expires_at: Timestamp,
}

impl TenantContext {
    pub(crate) fn new(
        tenant: TenantId,
        subject: Subject,
        roles: Roles,
        kid: KeyId,
        token_id: String,
        expires_at: Timestamp,
    ) -> Self {
        Self {
            tenant,
            subject,
            roles,
            kid,
            token_id,
            expires_at,
        }
    }

    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    pub fn subject(&self) -> &Subject {
        &self.subject
    }

    pub fn roles(&self) -> Roles {
        self.roles
    }

    pub fn kid(&self) -> &KeyId {
        &self.kid
    }

    pub fn token_id(&self) -> &str {
        &self.token_id
    }

    pub fn expires_at(&self) -> Timestamp {
        self.expires_at
    }

    /// Decides `action` for this caller with the built-in role rules.
    pub fn decide(&self, action: Action) -> Decision {
        self.roles.decide(action)
    }
}
