//! Where tenant requests meet the policy engine.
//!
//! INVARIANT: a decision for a request is made with the policy set of the request's verified
//! tenant and nothing else: the set is looked up by `TenantHandle::tenant()` (which comes from
//! the verified context) and, on a miss, built from that handle's own stored policies. There
//! is no path that takes a tenant id from the request.

use std::path::Path;
use std::sync::Arc;

use bulkhead_core::role::Decision;
use bulkhead_core::schema::{ClassSet, FieldPolicy};
use bulkhead_core::{Action, TenantContext};
use bulkhead_policy::{Engine, Principal, Resource, TenantPolicies};
use bulkhead_store::TenantHandle;
use serde_json::Value;

use crate::problem::ApiError;
use crate::state::HttpConfig;

/// How tenant requests are decided.
#[derive(Debug)]
pub enum PolicyMode {
    /// By Cedar: platform and tenant policies, with field masking.
    Cedar(Arc<Engine>),
    /// By the built-in role rules only (policies switched off in configuration).
    BuiltIn,
    /// The engine could not start: every tenant request is denied (fail closed).
    Unavailable,
}

impl PolicyMode {
    pub fn from_config(cfg: &HttpConfig) -> Self {
        if !cfg.policies {
            return PolicyMode::BuiltIn;
        }
        match Engine::new(cfg.policy_engine.clone()) {
            Ok(e) => PolicyMode::Cedar(Arc::new(e)),
            Err(e) => {
                tracing::error!(error = %e, "the policy engine could not start; tenant requests are denied");
                PolicyMode::Unavailable
            }
        }
    }

    pub fn engine(&self) -> Option<&Arc<Engine>> {
        match self {
            PolicyMode::Cedar(e) => Some(e),
            _ => None,
        }
    }
}

/// The caller as a principal.
pub fn principal(ctx: &TenantContext) -> Principal<'_> {
    Principal {
        subject: ctx.subject().as_str(),
        roles: ctx.roles(),
    }
}

/// The policy set of the handle's tenant: from the cache when fresh, else built from the
/// tenant's stored policy version in force.
pub async fn tenant_policies(
    engine: &Engine,
    h: &TenantHandle<'_>,
) -> Result<Arc<TenantPolicies>, ApiError> {
    // INVARIANT: the tenant is the handle's, which is the verified context's.
    let tenant = h.tenant();
    // Fresh for `policy.cache_ttl_seconds`, or, with several instances over one database, until
    // the change feed reports a change of the tenant (a policy put on another instance).
    let ttl = engine.config().ttl;
    if let Some(set) = engine.cached_if(tenant, |loaded_at| h.cache_fresh(loaded_at, ttl)) {
        return Ok(set);
    }
    let read_at = std::time::Instant::now();
    let stored = h.active_policy().await?;
    engine
        .load_as_of(
            tenant,
            stored.as_ref().map(|p| (p.version, p.text.as_str())),
            read_at,
        )
        .map_err(|problems| {
            // Stored policies were valid when written; failing now is a defect, and the
            // request is denied rather than decided without them.
            tracing::error!(%tenant, problems = problems.len(), "stored tenant policies no longer validate");
            ApiError::Internal
        })
}

/// What a request is allowed, decided once per request.
#[derive(Debug)]
pub struct Authorized {
    /// The field classes the caller may see in the collection the request is about
    /// (every class when there are no classified fields or policies are off).
    pub visible: ClassSet,
}

fn denied(action: Action) -> ApiError {
    tracing::info!(action = action.as_str(), "denied by policy");
    ApiError::Forbidden(action.as_str())
}

/// Decides `action` on `resource` for the caller; `Err(403)` naming the action when denied.
pub async fn authorize(
    mode: &PolicyMode,
    ctx: &TenantContext,
    h: &TenantHandle<'_>,
    action: Action,
    resource: Resource<'_>,
) -> Result<(), ApiError> {
    let (decision, by) = match mode {
        PolicyMode::Cedar(engine) => {
            let set = tenant_policies(engine, h).await?;
            (
                engine.decide(&set, &principal(ctx), action, &resource),
                "policy",
            )
        }
        PolicyMode::BuiltIn => (ctx.decide(action), "role"),
        PolicyMode::Unavailable => (Decision::Deny { action }, "policy-unavailable"),
    };
    match decision {
        Decision::Allow => Ok(()),
        Decision::Deny { action } => {
            // The denial is evidence: it is in the caller's audit log before it is answered.
            h.record_denied(action.as_str(), by).await?;
            Err(denied(action))
        }
    }
}

/// The classes of `fields` the caller may see in `collection`.
pub async fn visible_classes(
    mode: &PolicyMode,
    ctx: &TenantContext,
    h: &TenantHandle<'_>,
    collection: &str,
    fields: &FieldPolicy,
) -> Result<ClassSet, ApiError> {
    let present = fields.classes();
    if present == ClassSet::default() {
        return Ok(ClassSet::EVERY);
    }
    match mode {
        PolicyMode::Cedar(engine) => {
            let set = tenant_policies(engine, h).await?;
            Ok(engine.visible_classes(&set, &principal(ctx), collection, present))
        }
        PolicyMode::BuiltIn => Ok(ClassSet::EVERY),
        PolicyMode::Unavailable => Ok(ClassSet::default()),
    }
}

/// Removes the fields the caller may not see from a record's data (masking by omission).
pub fn mask(data: &mut Value, fields: &FieldPolicy, visible: ClassSet) {
    if let Value::Object(m) = data {
        for f in fields.hidden(visible) {
            m.remove(f.as_str());
        }
    }
}

/// Reads the platform policy files of `dir`: every `*.cedar` file, sorted by name.
pub fn read_policy_dir(dir: &Path) -> std::io::Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("cedar") || !path.is_file() {
            continue;
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("policy.cedar")
            .to_owned();
        files.push((name, std::fs::read_to_string(&path)?));
    }
    files.sort();
    Ok(files)
}

/// A fingerprint of the policy files in `dir` (names, sizes, modification times), to notice
/// changes cheaply.
pub fn dir_fingerprint(dir: &Path) -> std::io::Result<Vec<(String, u64, std::time::SystemTime)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("cedar") {
            continue;
        }
        let meta = entry.metadata()?;
        out.push((
            path.display().to_string(),
            meta.len(),
            meta.modified().unwrap_or(std::time::UNIX_EPOCH),
        ));
    }
    out.sort();
    Ok(out)
}

/// Loads the platform layer from `dir` into `engine`. On any problem the layer in force stays.
pub fn reload_platform(engine: &Engine, dir: &Path) -> Result<u64, String> {
    let files =
        read_policy_dir(dir).map_err(|e| format!("cannot read `{}`: {e}", dir.display()))?;
    engine.set_platform(files).map_err(|problems| {
        problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// Polls `dir` every `every` and reloads the platform layer when its policy files change
/// (hot reload). A change that fails validation is logged with each problem and not applied.
pub fn watch_policy_dir(
    engine: Arc<Engine>,
    dir: std::path::PathBuf,
    every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    // Taken now, so a change made right after this call is noticed.
    let mut seen = dir_fingerprint(&dir).ok();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = dir_fingerprint(&dir).ok();
            if now == seen {
                continue;
            }
            seen = now;
            let (engine, dir) = (engine.clone(), dir.clone());
            let result = tokio::task::spawn_blocking(move || reload_platform(&engine, &dir)).await;
            match result {
                Ok(Ok(generation)) => {
                    tracing::info!(generation, "platform policies reloaded");
                }
                Ok(Err(problems)) => {
                    tracing::error!(%problems, "platform policies changed but are invalid; the previous ones stay in force");
                }
                Err(e) => tracing::error!(error = %e, "platform policy reload failed"),
            }
        }
    })
}
