//! Policy test cases (`bulkhead policy test DIR`): a request and the decision it must get.
//! The file format is described in `docs/policies.md`.

use bulkhead_core::schema::Classification;
use bulkhead_core::{Action, Role, Roles};
use serde::Deserialize;

use crate::{Engine, Principal, Resource, TenantPolicies};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasePrincipal {
    pub subject: String,
    pub roles: Vec<Role>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "lowercase")]
pub enum CaseResource {
    Tenant,
    Collection {
        collection: String,
    },
    Record {
        collection: String,
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        owner: Option<String>,
    },
    Field {
        collection: String,
        classification: Classification,
    },
}

/// One case: would `principal` be allowed `action` on `resource`?
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub principal: CasePrincipal,
    pub action: String,
    pub resource: CaseResource,
    /// `allow` or `deny`.
    pub expect: Expect,
    /// If given, exactly these policy ids must have decided.
    #[serde(default)]
    pub decided_by: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Allow,
    Deny,
}

impl Expect {
    fn as_str(self) -> &'static str {
        match self {
            Expect::Allow => "allow",
            Expect::Deny => "deny",
        }
    }
}

/// A file of cases: `{"cases": [...]}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    pub cases: Vec<Case>,
}

/// The result of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub name: String,
    /// `None` when it passed; else what went wrong.
    pub failure: Option<String>,
    pub decision: &'static str,
    pub decided_by: Vec<String>,
}

/// Runs `case` against `set`.
pub fn run(engine: &Engine, set: &TenantPolicies, case: &Case) -> Outcome {
    let fail = |failure: String| Outcome {
        name: case.name.clone(),
        failure: Some(failure),
        decision: "deny",
        decided_by: Vec::new(),
    };
    let Some(action) = Action::parse(&case.action) else {
        return fail(format!("`{}` is not an action", case.action));
    };
    let Some(roles) = Roles::from_slice(&case.principal.roles) else {
        return fail("`principal.roles` is empty".into());
    };
    let who = Principal {
        subject: &case.principal.subject,
        roles,
    };
    let resource = match &case.resource {
        CaseResource::Tenant => Resource::Tenant,
        CaseResource::Collection { collection } => Resource::Collection(collection),
        CaseResource::Record {
            collection,
            id,
            owner,
        } => Resource::Record {
            collection,
            id: id.as_deref(),
            owner: owner.as_deref(),
        },
        CaseResource::Field {
            collection,
            classification,
        } => Resource::Field {
            collection,
            classification: *classification,
        },
    };
    let e = engine.explain(set, &who, action, &resource);
    let mut failure = None;
    if e.decision != case.expect.as_str() {
        failure = Some(format!(
            "expected {}, got {} (decided by: [{}])",
            case.expect.as_str(),
            e.decision,
            e.decided_by.join(", ")
        ));
    } else if let Some(want) = &case.decided_by {
        let mut want = want.clone();
        want.sort();
        if want != e.decided_by {
            failure = Some(format!(
                "expected decided by [{}], got [{}]",
                want.join(", "),
                e.decided_by.join(", ")
            ));
        }
    }
    Outcome {
        name: case.name.clone(),
        failure,
        decision: e.decision,
        decided_by: e.decided_by,
    }
}
